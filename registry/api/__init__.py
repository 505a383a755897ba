"""The REST API: a Litestar application over `registry.service` (`app.create_app`), one controller
per route group (`routes`), answers typed by `registry.wire`, the token, role and scope checks
(`guards`), the one error shape (`errors`), its tokens' rate limits (`limits`), upload sessions
staged on the server (`uploads`) and Prometheus metrics (`metrics`). It never touches the
catalog, the stores or the keys except through `Registry`."""
