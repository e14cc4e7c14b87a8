"""The HTTP service: the app, its batcher, metrics, prediction log, hot reload and where its model comes from
(a folder or a registry stage). The model it serves is tasks.runtime's."""
