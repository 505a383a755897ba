"""The REST API: a Litestar application over `registry.service` (`app.create_app`), its tokens'
rate limits (`limits`), upload sessions staged on the server (`uploads`) and Prometheus metrics
(`metrics`). It never touches the catalog or the stores except through `Registry`."""
