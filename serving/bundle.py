"""A SavedModel loaded as TF Serving's SavedModelBundle: a graph-mode session over the `serve` MetaGraphDef.

TF Serving loads every SavedModel — TF1 graphs and TF2 `tf.saved_model.save` exports alike — into a Session
(tags {"serve"}, variables restored, init and table ops run, asset paths fed) and answers a request by feeding the
SignatureDef's input tensor *names* and fetching its output tensor names in one Session::Run. Nothing checks a
request's shapes against the SignatureDef's declared TensorInfo shapes: the graph takes what its ops take, and a
tensor it cannot take fails with TensorFlow's own status and message (e.g. "Expects arg[0] to be float but string
is provided"). This module does the same through TensorFlow's graph-mode session: `Session._call_tf_sessionrun` is
DirectSession::Run itself, without the Python-side shape check that `Session.run` adds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model.loader_impl import SavedModelLoader

from serving.status import from_tf_error, invalid

SERVE_TAG = "serve"
# Hears every Session::Run: (batch size — dimension 0 of the first fed tensor, 1 for a scalar —, wall seconds),
# failed runs included. For measurement (e.g. benchmarks/); it runs on the request's thread, so it must be quick
# and thread-safe, and must not raise.
RunObserver = Callable[[int, float], None]


@dataclass
class SessionBundle:
    """One loaded SavedModel version: its session, its MetaGraphDef's signatures, and how many requests use it."""

    path: str
    session: tf.compat.v1.Session = field(repr=False)
    signature_defs: dict  # name → meta_graph_pb2.SignatureDef
    _outputs: dict = field(default_factory=dict, repr=False)  # tensor name → TF_Output
    observer: RunObserver | None = field(default=None, repr=False)
    _users: int = 0
    _closing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        """One Session::Run: feed tensors by name, fetch tensors by name; a failure is TF's status and message."""
        if self.observer is None:
            return self._run(feeds, fetches)
        started = time.perf_counter()
        try:
            return self._run(feeds, fetches)
        finally:
            first = next(iter(feeds.values()), None)
            self.observer(len(first) if first is not None and first.ndim else 1, time.perf_counter() - started)

    def _run(self, feeds: dict[str, np.ndarray], fetches: list[str]) -> list[np.ndarray]:
        try:
            feed_dict = {self._tf_output(name): value for name, value in feeds.items()}
            fetch_list = [self._tf_output(name) for name in fetches]
        except KeyError as exc:
            raise invalid(
                f"Tensor {exc.args[0]}, specified in either feed_devices or fetch_devices was not found in the Graph"
            ) from None
        try:
            return self.session._call_tf_sessionrun(None, feed_dict, fetch_list, [], None)
        except tf.errors.OpError as exc:
            raise from_tf_error(exc) from None
        except UnicodeDecodeError as exc:
            # TF's Python binding decodes the status message as UTF-8 and fails when an op echoed the client's
            # bytes (a corrupt image); the status code is lost with it. Such messages come from input checks.
            message = exc.object.decode("utf-8", "replace") if isinstance(exc.object, bytes) else str(exc)
            raise invalid(message) from None

    def _tf_output(self, name: str):
        output = self._outputs.get(name)
        if output is None:
            try:
                output = self.session.graph.get_tensor_by_name(name)._as_tf_output()
            except (KeyError, ValueError):
                raise KeyError(name) from None
            self._outputs[name] = output
        return output

    # --- lifetime: a version being unloaded keeps its session until the last request on it has finished ----------
    def acquire(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._closing and self._users == 0
        if close:
            self.session.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            close = self._users == 0
        if close:
            self.session.close()


def load_bundle(path: str, observer: RunObserver | None = None) -> SessionBundle:
    """Load the `serve` MetaGraphDef of the SavedModel at `path` into a new session (raises on any failure);
    `observer`, if given, hears every Session::Run on it."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default():
            meta_graph = SavedModelLoader(path).load(session, [SERVE_TAG])
    except BaseException:
        session.close()
        raise
    graph.finalize()  # nothing may add ops to a graph that serves
    return SessionBundle(path, session, dict(meta_graph.signature_def), observer=observer)
