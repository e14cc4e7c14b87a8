"""The contender benchmarks/serving.py sets against `tunegate serve`: what a user would write without it. A FastAPI
endpoint around a Hugging Face `pipeline("text-classification")` on the FP32 PyTorch model, under uvicorn,
truncating at the served folder's max length, torch on an explicit number of threads.

  python benchmarks/hf_server.py --model artifacts/train/model --max-length 64 --threads 2 --port 8100

POST /predict {"text": "..."} -> {"label": ..., "score": ...}; GET /health answers 200 once a warm-up call is done.
"""

from __future__ import annotations

import argparse

from pydantic import BaseModel


class Review(BaseModel):
    text: str


def build_app(model: str, max_length: int, threads: int, endpoint: str = "sync"):
    """The FastAPI app; the pipeline is loaded and warmed before it is returned."""
    import torch
    from fastapi import FastAPI
    from transformers import pipeline

    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=model, device="cpu")
    classifier("warm-up", truncation=True, max_length=max_length)

    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"ready": True}

    def classify(review: Review) -> dict:
        with torch.inference_mode():
            (answer,) = classifier(review.text, truncation=True, max_length=max_length)
        return {"label": answer["label"], "score": float(answer["score"])}

    # sync (the default, FastAPI's advice for blocking calls): a plain `def` endpoint, run in FastAPI's thread pool.
    # async: the model runs on the event loop itself, one call at a time; measured on the 2-core host with other load
    # it served 1-2 req/s against the plain def's ~50 (the user's likely first try, but not the fair contender).
    if endpoint == "async":
        @app.post("/predict")
        async def predict(review: Review) -> dict:
            return classify(review)
    else:
        app.post("/predict")(classify)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a save_pretrained folder (artifacts/train/model)")
    parser.add_argument("--max-length", type=int, required=True, help="tokens read per text (serving.json max_length)")
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--endpoint", choices=("sync", "async"), default="sync",
                        help="plain def endpoint (FastAPI's thread pool) or async def (the model on the event loop)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    import uvicorn

    uvicorn.run(build_app(args.model, args.max_length, args.threads, args.endpoint), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
