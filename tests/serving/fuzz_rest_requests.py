"""The requests tests/serving/test_fuzz.py sends over REST: paths good and odd, and JSON bodies (predict, classify,
regress) with junk put in, mutated, or replaced by random bytes. Seeded, as the gRPC ones (fuzz_requests.py)."""

from __future__ import annotations

import base64
import json
import random

from schemas import IMAGE_ENCODED
from tests.serving.fuzz_requests import OUTPUTS, Corpus, _mutate


def _junk(rng: random.Random, depth: int = 0):
    """A random JSON value, now and then huge, deep or of the wrong type."""
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 7, 2**63, -(2**63) - 1, 2**70, 10**30])
    if kind == 3:
        return rng.choice([1.5, -0.0, 1e308, 5e-324, 3.0])
    if kind == 4:
        return rng.choice(["", "x", "pets", "serving_default", "ünï", "\x00", "b64", "breed", "A" * 500])
    if kind == 5:
        return {"b64": rng.choice(["", "%%%", "AAAA", base64.b64encode(rng.randbytes(12)).decode(), 5, None])}
    if kind == 6:
        nested = rng.choice([3, 50, 500])  # deeper ones are sent as raw text (json.dumps would refuse them)
        value = rng.choice([[], 1, "x"])
        for _ in range(nested):
            value = [value]
        return value
    if kind in (7, 8):
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["b64", "image_bytes", "instances", "inputs", "x", "signature_name", ""]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _mutate_json(rng: random.Random, value):
    """Replace a random node with junk, or drop or add a key somewhere."""
    if isinstance(value, (dict, list)) and value and rng.random() < 0.7:
        key = rng.choice(list(value)) if isinstance(value, dict) else rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.5:
            value[key] = _mutate_json(rng, value[key])
        elif roll < 0.75 and isinstance(value, dict):
            del value[key]
        elif isinstance(value, dict):
            value[rng.choice(["signature_name", "output_filter", "instances", "inputs", "context", "ü"])] = _junk(rng)
        else:
            value[key] = _junk(rng)
        return value
    return _junk(rng)


def _predict_json(rng: random.Random, corpus: Corpus) -> dict:
    images = [corpus.b64() if rng.random() < 0.8 else {"b64": base64.b64encode(rng.choice(corpus.jpegs)).decode()}]
    images += [corpus.b64() for _ in range(rng.randint(0, 2))]
    form = rng.randrange(4)
    if form == 0:
        body = {"instances": images}
    elif form == 1:
        body = {"instances": [{"image_bytes": image} for image in images]}
    elif form == 2:
        body = {"inputs": {"image_bytes": images}}
    else:
        body = {"inputs": images}
    if rng.random() < 0.3:
        body["signature_name"] = rng.choice(["serving_default", "predict_examples", "", "nope"])
    if rng.random() < 0.2:
        body["output_filter"] = rng.choices(OUTPUTS, k=rng.randint(1, 2))
    return body


def _examples_json(rng: random.Random, corpus: Corpus) -> dict:
    examples = [{rng.choice(["x", IMAGE_ENCODED, "y"]): _junk(rng, 1)} for _ in range(rng.randint(0, 3))]
    body = {"examples": examples}
    if rng.random() < 0.3:
        body["context"] = {"x": _junk(rng, 1)}
    if rng.random() < 0.2:
        body["signature_name"] = rng.choice(["serving_default", "regress_x", ""])
    return body


def _rest_case(rng: random.Random, corpus: Corpus) -> tuple[str, str, bytes | None]:
    prefix, name, selector = "/v1/models/", "pets", rng.choice(["", "/versions/1"])
    if rng.random() < 0.4:  # an odd path
        prefix = rng.choice(["/v1/models/"] * 5 + ["/v1/models", "/v2/models/", "/", "/v1/models//", "/V1/MODELS/"])
        name = rng.choice(["pets"] * 4 + ["cats", "", "p%20ets", "pets.", "%C3%BC", rng.randbytes(3).hex()])
        selector = rng.choice(
            ["", "/versions/1", "/versions/0", "/versions/99999999999999999999", "/versions/-1", "/versions/x"]
            + ["/labels/stable", "/labels/", "/versions/1/labels/x"]
        )
    suffix = rng.choice([":predict"] * 6 + [":classify", ":regress", "/metadata", "/metadata", "", "", ":x", "/"])
    path = prefix + name + selector + suffix + rng.choice([""] * 6 + ["?", "?x=1"])
    posts = suffix in (":predict", ":classify", ":regress")
    method = ("POST" if posts else "GET") if rng.random() < 0.9 else ("GET" if posts else "POST")
    if method == "GET":
        return method, path, None
    roll = rng.random()
    if roll < 0.05:
        return method, path, b""
    if roll < 0.12:
        return method, path, rng.randbytes(rng.randint(1, 64))
    if roll < 0.14:  # around Python's recursion limit (1000), where parsing or walking the JSON may give up
        depth = rng.choice([980, 995, 1010, 5000])
        return method, path, b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
    body = _predict_json(rng, corpus) if suffix != ":classify" and suffix != ":regress" else None
    body = body or _examples_json(rng, corpus)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        body = _mutate_json(rng, body)
    data = json.dumps(body).encode()
    return method, path, _mutate(rng, data) if rng.random() < 0.15 else data
