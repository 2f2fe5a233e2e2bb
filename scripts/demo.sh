#!/usr/bin/env bash
# Install, serve the tiny SAM3 model with the bundled Triton server (CPU), answer a real request,
# and keep serving until Ctrl-C. Pass --once to stop after the request.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh serve,export,test
. .venv/bin/activate
log=$(mktemp -t sam3-serve.XXXX.log)
sam3-triton serve --model tiny >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
echo "starting: sam3-triton serve --model tiny (first run exports the model, ~2 min; log: $log)"
until grep -q "sam3-triton is ready" "$log"; do
  if ! kill -0 $server 2>/dev/null; then cat "$log"; exit 1; fi
  sleep 2
done
cat "$log" | sed -n '/is ready/,$p'
python scripts/example_request.py --url http://127.0.0.1:8080/
sam3-client segment "$(python -c "import skimage,os;print(os.path.join(os.path.dirname(skimage.__file__),'data','astronaut.png'))")" --text person --threshold 0.15 --url 127.0.0.1:8001 --out demo_overlay.png && echo "overlay written to demo_overlay.png"
if [ "${1:-}" = "--once" ]; then exit 0; fi
echo "serving; Ctrl-C to stop"
wait $server
