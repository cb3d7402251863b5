"""Export: a versioned SavedModel for TensorFlow Serving at `<serving_dir>/<model_name>/<version>/`.

Signatures (both with the same outputs):
  serving_default   image_bytes: tf.string [N] — JPEG/PNG/GIF/BMP file contents
  predict_examples  examples:    tf.string [N] — serialized tf.train.Example with image/encoded
Outputs: species_probs [N,S], species [N], <species>_breed_probs [N,B_s] (conditional on the species),
breed_probs [N,B] (joint p(species)·p(breed|species), global CLASS-ID order, sums to 1), and the answer decoded
top-down by components.model.hierarchical_answer: species [N], breed [N] (a breed of that species),
species_uncertain [N] (top species probability below export.species_uncertainty_threshold; then the top-k
come from all species), top_k_breeds [N,k] and top_k_scores [N,k] (joint probabilities), and image_error [N]
("" or why that image could not be read: not an image, truncated). A bad image does not fail the batch: its row
carries the error and answers for a blank image. Label names are read from assets/ (breeds.txt, species.txt).

The version is written under a staging name that TF Serving ignores (not an integer) and renamed into place,
so a watching server never sees a partial model.

All files go through tf.io.gfile, so the serving directory may be a gs://, s3://, hdfs://, ... URL. Claiming a
version number differs by filesystem:
  * local paths: os.rename(staging, <version>) — atomic, and it fails when another export already took that
    number, so concurrent exports (retrying with the next number) can never mix their files;
  * URLs: object stores have no directories and no atomic rename (tf.io.gfile.rename of a "directory" on gs:// or
    s3:// copies and deletes object by object), so the staged files are moved one by one with
    tf.io.gfile.rename(overwrite=False): assets.extra/petpipe.json first — it fails if the number is taken, the
    claim — and saved_model.pb last, so saved_model.pb present ⇒ the whole version present. A watcher (TF
    Serving polls remote base paths the same way) can still see the version directory before saved_model.pb
    arrives; it then finds no SavedModel yet and retries its load (TF Serving: --max_num_load_retries). The
    claim is check-then-write, not atomic: two exports racing for the same number on an object store can mix
    files, so run one exporter per model base path there (the pipeline's chief).
The vocabulary files that become the SavedModel's assets/ are written to a local temporary directory first:
tf.saved_model.save copies them into the (possibly remote) export through gfile.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid

import tensorflow as tf

from components import fileio
from components.export_config import ExportConfig
from components.model import SPECIES_HEAD, breed_head, hierarchical_answer
from components.preprocess import decode_and_resize
from components.serving_versions import existing_versions, version_dirs_under
from schemas import IMAGE_ENCODED, Hierarchy
from schemas.serving_layout import WARMUP_FILE

IMAGE_BYTES_INPUT = "image_bytes"
EXAMPLES_INPUT = "examples"
DEFAULT_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "predict_examples"
STAGING_PREFIX = "_staging-"


def _label_table(path: str) -> tf.lookup.StaticHashTable:
    """Line number → line text, read from a vocabulary file that is saved as a SavedModel asset."""
    initializer = tf.lookup.TextFileInitializer(
        path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


IMAGE_ERROR_OUTPUT = "image_error"
_JPEG_END = b"\xff\xd9"


def image_envelope_error(data: tf.Tensor) -> tf.Tensor:
    """Why encoded image bytes (scalar tf.string) cannot be decoded, or "" — checked in the graph from the format's
    start and end markers, so one truncated or non-image item is reported per item instead of failing the whole
    request in the decoder. (Damage between intact markers still fails the request in the decoder.)"""
    length = tf.strings.length(data)

    def starts(prefix: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(data, 0, len(prefix)), prefix)

    def check() -> tf.Tensor:
        # Entropy-coded JPEG data cannot contain FF D9, so its presence means the end-of-image marker arrived.
        jpeg_ok = tf.size(tf.strings.split(data, sep=_JPEG_END)) > 1
        png_ok = tf.equal(tf.strings.substr(data, length - 8, 4), b"IEND")
        gif_ok = tf.equal(tf.strings.substr(data, length - 1, 1), b";")
        bmp_size = tf.io.decode_raw(tf.strings.substr(data, 2, 4), tf.int32, little_endian=True)[0]
        bmp_ok = tf.logical_and(length >= 32, tf.logical_and(bmp_size >= 32, bmp_size <= length))
        truncated = tf.constant("truncated image: the file ends before the image does")
        verdicts = [
            (starts(b"\xff\xd8\xff"), jpeg_ok),
            (starts(b"\x89PNG\r\n\x1a\n"), png_ok),
            (tf.logical_or(starts(b"GIF87a"), starts(b"GIF89a")), gif_ok),
            (starts(b"BM"), bmp_ok),
        ]
        error = tf.constant("not a JPEG, PNG, GIF or BMP image")
        for is_format, ok in reversed(verdicts):
            error = tf.where(is_format, tf.where(ok, "", truncated), error)
        return error

    return tf.cond(length < 12, lambda: tf.constant("empty, or too short to be an image"), check)


def _variables_captured_by(*functions) -> list[tf.Variable]:
    found: dict[int, tf.Variable] = {}
    for function in functions:
        for variable in function.get_concrete_function().variables:
            found.setdefault(id(variable), variable)
    return list(found.values())


class ServingModule(tf.Module):
    """The multi-head Keras model wrapped with in-graph decoding and named, labelled outputs."""

    def __init__(
        self, model, hierarchy: Hierarchy, image_size: int, top_k: int, vocab_dir: str, uncertainty_threshold: float
    ):
        super().__init__()
        self.model = model
        self._hierarchy = hierarchy
        self._image_size = image_size
        self._top_k = top_k
        self._uncertainty_threshold = uncertainty_threshold
        self.breed_names = _label_table(os.path.join(vocab_dir, "breeds.txt"))
        self.species_names = _label_table(os.path.join(vocab_dir, "species.txt"))
        # Keras 3 variables reach the SavedModel twice: through the model (restored by the saver) and as the
        # tf.Variables the traced functions capture (not restored). A TF1 session loader — TF Serving's — then
        # fails with "Could not find variable ..." (tensorflow/serving#2226). Tracking the captured variables, as
        # keras.export.ExportArchive does, puts them in the checkpoint.
        self.captured_variables = _variables_captured_by(self.serve_image_bytes, self.serve_examples)

    def _predict_from_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self._image_size
        errors = tf.map_fn(image_envelope_error, image_bytes, fn_output_signature=tf.string)
        blank = tf.zeros([size, size, 3], tf.uint8)
        images = tf.map_fn(
            lambda item: tf.cond(tf.equal(item[1], ""), lambda: decode_and_resize(item[0], size), lambda: blank),
            (image_bytes, errors),
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
        )
        outputs = self.model(tf.cast(images, tf.float32), training=False)
        answer = hierarchical_answer(outputs, self._hierarchy, self._top_k, self._uncertainty_threshold)
        result = {
            "species_probs": outputs[SPECIES_HEAD],
            "species": self.species_names.lookup(tf.cast(answer["species"], tf.int64)),
            "species_uncertain": answer["species_uncertain"],
            "breed_probs": answer["breed_probs"],
            "breed": self.breed_names.lookup(tf.cast(answer["breed"], tf.int64)),
            "top_k_breeds": self.breed_names.lookup(tf.cast(answer["top_k_breeds"], tf.int64)),
            "top_k_scores": answer["top_k_scores"],
            IMAGE_ERROR_OUTPUT: errors,
        }
        for species in self._hierarchy.species:
            result[f"{breed_head(species)}_probs"] = outputs[breed_head(species)]
        return result

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)])
    def serve_image_bytes(self, image_bytes):
        return self._predict_from_bytes(image_bytes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        parsed = tf.io.parse_example(examples, {IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)})
        return self._predict_from_bytes(parsed[IMAGE_ENCODED])


MODELS_CONFIG = "models.config"


def write_warmup_requests(version_dir: str, model_name: str, images: list[bytes]) -> str:
    """TF Serving's warmup file: a TFRecord of PredictionLog, one real Predict request per image, which the
    server replays when it loads the version (so the first user request does not pay for graph warm-up)."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for image in images:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = DEFAULT_SIGNATURE
            request.inputs[IMAGE_BYTES_INPUT].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_model_config(serving_dir: str):
    """The ModelServerConfig in `<serving_dir>/models.config` (TF Serving's --model_config_file), or an empty one."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    path = os.path.join(serving_dir, MODELS_CONFIG)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            try:
                text_format.Parse(f.read(), config)
            except text_format.ParseError as exc:
                raise ValueError(f"{path}: not a ModelServerConfig text proto: {exc}") from None
    return config


def write_model_config(serving_dir: str, model_name: str, model_base_path: str) -> str:
    """Add or update `model_name` in `<serving_dir>/models.config`; other models and version labels are kept.
    base_path is absolute, as TF Serving requires (mount the directory at the same path in a container)."""
    from google.protobuf import text_format

    config = read_model_config(serving_dir)
    entries = config.model_config_list.config
    entry = next((c for c in entries if c.name == model_name), None) or entries.add(name=model_name)
    entry.base_path = fileio.absolute(model_base_path)
    entry.model_platform = "tensorflow"
    if not entry.HasField("model_version_policy"):
        entry.model_version_policy.latest.num_versions = 1
    path = os.path.join(serving_dir, MODELS_CONFIG)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text_format.MessageToString(config))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def apply_retention(serving_dir: str, model_name: str, model_base_path: str, keep: int) -> list[int]:
    """Delete all but the newest `keep` versions — never the newest (served) one nor one a version label in
    models.config points at. Returns the deleted versions. keep=0 keeps everything."""
    dirs = version_dirs_under(model_base_path)
    versions = list(dirs)
    if keep <= 0 or len(versions) <= keep:
        return []
    labelled = {
        v
        for c in read_model_config(serving_dir).model_config_list.config
        if c.name == model_name
        for v in c.version_labels.values()
    }
    doomed = [v for v in versions[:-keep] if v not in labelled]
    for version in doomed:
        tf.io.gfile.rmtree(os.path.join(model_base_path, dirs[version]))
    return doomed


def export_model(
    model,
    hierarchy: Hierarchy,
    model_base_path: str,
    image_size: int,
    config: ExportConfig,
    metadata: dict | None = None,
    warmup_images: list[bytes] | None = None,
) -> tuple[int, str]:
    """Save a new version atomically; returns (version, path). Versions increase strictly: max existing + 1.
    From `config`: top_k, species_uncertainty_threshold (the serving signature's), model_name (the warmup's)."""
    tf.io.gfile.makedirs(model_base_path)
    staging = os.path.join(model_base_path, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    with tempfile.TemporaryDirectory() as vocab_dir:  # local scratch: saving copies the files into assets/
        fileio.write_text(os.path.join(vocab_dir, "breeds.txt"), "".join(f"{n}\n" for n in hierarchy.breed_names))
        fileio.write_text(os.path.join(vocab_dir, "species.txt"), "".join(f"{n}\n" for n in hierarchy.species))
        module = ServingModule(
            model, hierarchy, image_size, config.top_k, vocab_dir, config.species_uncertainty_threshold
        )
        signatures = {
            DEFAULT_SIGNATURE: module.serve_image_bytes.get_concrete_function(),
            EXAMPLES_SIGNATURE: module.serve_examples.get_concrete_function(),
        }
        try:
            tf.saved_model.save(module, staging, signatures=signatures)
        except BaseException:
            fileio.rmtree(staging, ignore_errors=True)
            raise
    extra = os.path.join(staging, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, "petpipe.json"), "w") as f:
        f.write(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str))
    if warmup_images:
        write_warmup_requests(staging, config.model_name, warmup_images)
    # The claim fails when the number is taken, so a concurrent export that took the same number retries.
    for _ in range(100):
        version = max(existing_versions(model_base_path), default=0) + 1
        path = os.path.join(model_base_path, str(version))
        try:
            _claim(staging, path)
            return version, path
        except OSError:
            if not tf.io.gfile.exists(path):
                raise
    raise RuntimeError(f"{model_base_path}: could not claim a version number")


CLAIM_FILE = os.path.join("assets.extra", "petpipe.json")  # moved first on object stores: the claim
LAST_FILE = "saved_model.pb"  # moved last: once it is there, so is the rest of the version


def _claim(staging: str, path: str) -> None:
    """Move the staged export to `path`; OSError (FileExistsError when taken) if `path` already exists. Local:
    one atomic os.rename. URLs: file by file with gfile (see the module docstring), claim file first."""
    if not fileio.is_remote(path):
        os.rename(staging, path)  # atomic; fails onto an existing non-empty directory
        return
    dirs, files = [], []
    for directory, _, names in fileio.walk(staging):
        rel = os.path.relpath(directory, staging)
        dirs.append("" if rel == os.curdir else rel)
        files += [os.path.join(dirs[-1], name) for name in names]
    files.sort(key=lambda rel: (rel != CLAIM_FILE, rel == LAST_FILE, rel))
    if CLAIM_FILE not in files:
        raise FileNotFoundError(f"{staging}: no {CLAIM_FILE} to claim the version with")

    def move(rel: str) -> None:
        tf.io.gfile.makedirs(os.path.dirname(os.path.join(path, rel)))
        with fileio.os_errors(os.path.join(path, rel)):
            tf.io.gfile.rename(os.path.join(staging, rel), os.path.join(path, rel), overwrite=False)

    if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path}: version taken")
    move(CLAIM_FILE)  # AlreadyExistsError → FileExistsError when another export got here first: nothing moved
    for rel in dirs:  # empty directories too, where the filesystem has directories
        tf.io.gfile.makedirs(os.path.join(path, rel))
    for rel in files[1:]:
        try:
            move(rel)
        except OSError as exc:
            raise RuntimeError(f"{path}: version claimed but {rel} could not be moved in: {exc}") from exc
    fileio.rmtree(staging, ignore_errors=True)
