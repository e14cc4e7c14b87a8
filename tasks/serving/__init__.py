"""The HTTP service: the app, its batcher, metrics, prediction log, hot reload, the shadow that mirrors live texts to a
candidate, and where its models come from (a folder or a registry stage). The model it serves is tasks.runtime's."""
