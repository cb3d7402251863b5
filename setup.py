"""petpipe: a Beam + TensorFlow training pipeline and TF Serving stand-in for species → breed classification."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="petpipe",
    version="0.1.0",
    description="Beam ingest/preprocess → multi-head Keras model → versioned SavedModel → TF Serving gRPC",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=find_packages(
        include=["pipeline", "pipeline.*", "components", "serving", "schemas", "common", "datasources"]
    ),
    package_data={
        "schemas": ["schema.pbtxt", "hierarchy.json"],
        "components": ["templates/*.html.j2", "templates/*.css"],  # the run report page
    },
    install_requires=[
        # tensorflow-serving-api pulls in the full tensorflow package, so we depend on it (not tensorflow-cpu).
        "tensorflow>=2.21,<2.22",
        "tensorflow-serving-api>=2.21,<2.22",
        "tensorflow-datasets>=4.9.7,<5",
        "tensorflow-metadata>=1.17,<2",
        "apache-beam>=2.77,<3",
        "google-crc32c>=1.5",  # Beam's WriteToTFRecord needs it; plain apache-beam does not bring it
        "importlib_resources>=6",  # TFDS 4.9.x imports it to prepare data sets but does not declare it
        "numpy>=1.26,<3",
        "pillow>=10",  # the embedded data set generator encodes JPEGs with it
        "matplotlib>=3.8",  # the plots of the per-run HTML report
        "jinja2>=3.1",  # the per-run HTML report's template (autoescaped)
        "tensorboard>=2.20",  # training logs (tensorflow 2.21 no longer installs it)
        "grpcio>=1.60",
        "protobuf>=5.28,<7",
    ],
    # pyyaml and cryptography (both already brought by apache-beam) read the deploy files and make TLS test
    # certificates in the tests; prometheus-client's parser reads the metrics page as Prometheus would.
    extras_require={
        "dev": [
            "pytest>=8",
            "ruff>=0.6",
            "import-linter>=2.1",  # make lint checks that imports only go down the layers
            "psutil>=5.9",  # the benchmarks' CPU accounting
            "pyyaml",
            "cryptography",
            "prometheus-client>=0.20",
            "apache-beam[dask]>=2.77,<3",  # tests/pipeline/test_dask_runner.py runs the data stage on Dask
        ],
        # --runner=DaskRunner (Dask distributed): dask and distributed >= 2024.4.2; 2026.8.0 resolved with our pins
        "dask": ["apache-beam[dask]>=2.77,<3"],
    },
    entry_points={"console_scripts": ["petpipe=pipeline.cli:main"]},
)
