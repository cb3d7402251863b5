"""TF Serving's configuration files, read with TF Serving's own message definitions.

`--model_config_file` is a ModelServerConfig (shipped in tensorflow-serving-api). `--batching_parameters_file`
(BatchingParameters, session_bundle_config.proto), `--ssl_config_file` (SSLConfig, ssl_config.proto) and
`--monitoring_config_file` (MonitoringConfig, monitoring_config.proto) are not shipped in the Python package, so
their messages are declared here with TF Serving's field names and types; text format addresses fields by name,
so a file written for the real server parses here and vice versa.
"""

from __future__ import annotations

import re

import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

_Field = descriptor_pb2.FieldDescriptorProto
_SCALAR = {"string": _Field.TYPE_STRING, "bool": _Field.TYPE_BOOL, "int64": _Field.TYPE_INT64}

_MESSAGES = {
    "SSLConfig": [("server_key", "string"), ("server_cert", "string"), ("custom_ca", "string"),
                  ("client_verify", "bool")],
    "BatchingParameters": [("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
                           ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
                           ("thread_pool_name", "StringValue"), ("allowed_batch_sizes", "repeated int64"),
                           ("pad_variable_length_inputs", "bool"), ("enable_large_batch_splitting", "BoolValue"),
                           ("max_execution_batch_size", "Int64Value")],
    "PrometheusConfig": [("enable", "bool"), ("path", "string")],
    "MonitoringConfig": [("prometheus_config", "PrometheusConfig")],
}  # fmt: skip


def _message_classes() -> dict:
    file = descriptor_pb2.FileDescriptorProto(
        name="petpipe/tf_serving_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, fields in _MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for number, (name, kind) in enumerate(fields, start=1):
            field = message.field.add(name=name, number=number, label=_Field.LABEL_OPTIONAL)
            if kind.endswith("Value"):
                field.type, field.type_name = _Field.TYPE_MESSAGE, f".google.protobuf.{kind}"
            elif kind in _MESSAGES:  # one of ours, declared above it
                field.type, field.type_name = _Field.TYPE_MESSAGE, f".tensorflow.serving.{kind}"
            elif kind.startswith("repeated "):
                field.type, field.label = _SCALAR[kind.split()[1]], _Field.LABEL_REPEATED
            else:
                field.type = _SCALAR[kind]
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in _MESSAGES}  # fmt: skip


_CLASSES = _message_classes()
SSLConfig = _CLASSES["SSLConfig"]
BatchingParameters = _CLASSES["BatchingParameters"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
ModelServerConfig = model_server_config_pb2.ModelServerConfig


class ConfigFileError(ValueError):
    """A configuration file that cannot be read or parsed; the message names the file (and line)."""


def parse_text_proto(text: str, message, what: str):
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        # ParseError reads "3:5 : Message type ... has no field named ..."; say which file that line is in.
        raise ConfigFileError(f"{what}:{exc}") from None


def read_text_proto(path: str, message_class):
    try:
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    except (tf.errors.OpError, OSError) as exc:
        raise ConfigFileError(f"{path}: cannot read: {getattr(exc, 'message', exc)}") from None
    return parse_text_proto(text, message_class(), path)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def validate_model_server_config(config: ModelServerConfig, what: str = "model config") -> None:
    """What TF Serving refuses, plus model names that could be mistaken for paths (they are only ever looked up,
    never joined into a path, but a name like '../x' is a mistake worth reporting)."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigFileError(f"{what}: custom_model_config is not supported; use model_config_list")
    seen = set()
    for entry in config.model_config_list.config:
        if not _MODEL_NAME.match(entry.name):
            raise ConfigFileError(f"{what}: model name {entry.name!r}: letters, digits, '_', '.', '-' only")
        if entry.name in seen:
            raise ConfigFileError(f"{what}: Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not entry.base_path:
            raise ConfigFileError(f"{what}: model {entry.name}: base_path is empty")
        if entry.model_platform not in ("", "tensorflow"):
            raise ConfigFileError(f"{what}: model {entry.name}: model_platform {entry.model_platform!r} unsupported")
        policy = entry.model_version_policy
        if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 1:
            raise ConfigFileError(f"{what}: model {entry.name}: latest.num_versions must be at least 1")
