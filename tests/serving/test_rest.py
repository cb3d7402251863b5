"""TF Serving's REST API, over plain HTTP, against the same servable as gRPC."""

import base64
import io
import json
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from serving.server import start_server
from tests.image_factory import DAMAGED_JPEG


def _jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def rest(exported_model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("rest") / "pets")
    shutil.copytree(exported_model[2], os.path.join(base, "3"))
    running = start_server(base, "pets", port=0, rest_api_port=0)
    yield f"http://127.0.0.1:{running.rest_port}"
    running.stop()


def _call(url: str, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_row_format_predict(rest, hierarchy):
    code, out = _call(f"{rest}/v1/models/pets:predict", {"instances": [_b64(_jpeg((200, 0, 0))), _b64(_jpeg(0))]})
    assert code == 200 and len(out["predictions"]) == 2
    for prediction in out["predictions"]:
        assert abs(sum(prediction["breed_probs"]) - 1) < 1e-4
        assert hierarchy.by_name[prediction["breed"]].species == prediction["species"]
        assert len(prediction["top_k_breeds"]) == 5 and isinstance(prediction["species_uncertain"], bool)


def test_columnar_format_and_version_path(rest):
    body = {"signature_name": "serving_default", "inputs": {"image_bytes": [_b64(_jpeg((1, 2, 3)))]}}
    code, out = _call(f"{rest}/v1/models/pets/versions/3:predict", body)
    assert code == 200
    assert np.array(out["outputs"]["species_probs"]).shape == (1, 2)
    assert np.array(out["outputs"]["breed_probs"]).shape == (1, 37)


def test_status_and_metadata(rest):
    code, status = _call(f"{rest}/v1/models/pets")
    assert code == 200
    assert status["model_version_status"][0]["version"] == "3"
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    code, metadata = _call(f"{rest}/v1/models/pets/versions/3/metadata")
    assert code == 200 and metadata["model_spec"]["name"] == "pets"
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["inputs"]) == ["image_bytes"] and "breed_probs" in signature["outputs"]


@pytest.mark.parametrize(
    "path, body, code, says",
    [
        ("/v1/models/cats:predict", {"instances": [_b64(b"x")]}, 404, "Servable not found for request: Latest(cats)"),
        ("/v1/models/pets/versions/9:predict", {"instances": [_b64(b"x")]}, 404, "Specific(pets, 9)"),
        ("/v1/models/pets:predict", {"instances": [_b64(DAMAGED_JPEG)]}, 400, "Invalid JPEG data"),
        (
            "/v1/models/pets:predict",
            {"signature_name": "nope", "instances": [1]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        ("/v1/models/pets:predict", {"rows": []}, 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/pets:predict", {"instances": [{"b64": "%%%"}]}, 400, "Unable to base64 decode"),
        ("/v1/models/pets:predict", b"{not json", 400, "JSON Parse error"),
        ("/v1/models/pets:explode", {"instances": []}, 400, "Malformed request: POST /v1/models/pets:explode"),
    ],
)
def test_errors_answer_with_tf_serving_codes(rest, path, body, code, says):
    status, out = _call(f"{rest}{path}", body)
    assert status == code and says in out["error"]
    assert _call(f"{rest}/v1/models/pets")[0] == 200  # still serving
