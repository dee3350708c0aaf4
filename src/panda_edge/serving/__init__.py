"""`panda serve`: the runtime behind OpenAI's Chat Completions API, with a video content part.

protocol: the request's JSON to a `ChatRequest`, and OpenAI's error shape; media: a video part's URL
to a local file (under --media-dir, a private temporary copy of a data: URL, a download when allowed);
worker: the one decoder thread, its bounded queue and the live conversation; metrics: Prometheus
text; app: the Starlette routes; server: uvicorn around them.
"""
