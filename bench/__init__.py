"""Measuring the service: the benchmark (``run``), transformers' pipeline as its reference
(``reference``) and the soak test (``soak``). It uses the client library and starts or kills
servers, so it lives beside ``client/`` (a pure library) rather than inside it."""
