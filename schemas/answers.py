"""The answer about one image, as every consumer of the serving signature reports it: `petpipe predict` (from a
server's response) and `petpipe infer` (from the SavedModel run in a Beam job) build it from the signature's
outputs here, so both print the same fields with the same values.

Pure Python over the outputs' arrays (anything indexable: numpy arrays, lists); no TensorFlow, grpc or Beam.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from schemas import load_hierarchy

# The files a directory argument stands for (petpipe predict, petpipe infer).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass(frozen=True)
class PetAnswer:
    species: str
    species_probs: dict[str, float]
    breed: str
    breed_prob: float
    top_k: list[tuple[str, float]]
    version: int | None  # None over REST: TF Serving's REST predict answer does not say which version answered
    error: str = ""  # why the image could not be read ("" when it could); then the rest is meaningless
    species_uncertain: bool = False  # the top species is below the export's threshold; top-k spans all species


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def answers_from_outputs(outputs: dict, version: int | None, species_names: list[str] | None = None) -> list[PetAnswer]:
    """The serving signature's outputs (arrays with one row per image; strings as bytes over gRPC and from a
    SavedModel, str over REST) → answers."""
    species_probs = outputs["species_probs"]
    if species_names is None:
        # species_probs columns follow the hierarchy the model was trained with (shipped in schemas/).
        species_names = list(load_hierarchy().species)
    answers = []
    for i in range(len(species_probs)):
        top = [
            (_text(b), float(s)) for b, s in zip(outputs["top_k_breeds"][i], outputs["top_k_scores"][i], strict=True)
        ]
        answers.append(
            PetAnswer(
                species=_text(outputs["species"][i]),
                species_probs={name: float(p) for name, p in zip(species_names, species_probs[i], strict=True)},
                breed=_text(outputs["breed"][i]),
                breed_prob=top[0][1],  # joint probability of the answered breed
                top_k=top,
                version=version,
                error=_text(outputs["image_error"][i]) if "image_error" in outputs else "",
                species_uncertain=bool(outputs["species_uncertain"][i]) if "species_uncertain" in outputs else False,
            )
        )
    return answers


def error_answer(reason: str, version: int | None) -> PetAnswer:
    """The answer for an input the model never saw (an unreadable file, an image its decoder refused)."""
    return PetAnswer(species="", species_probs={}, breed="", breed_prob=0.0, top_k=[], version=version, error=reason)


def answer_dict(path: str, answer: PetAnswer) -> dict:
    """One JSON object: `petpipe predict --json`'s line and `petpipe infer`'s output row."""
    return {"image": path, **asdict(answer), "top_k": [{"breed": b, "score": p} for b, p in answer.top_k]}


def format_answer(label: str, answer: PetAnswer) -> str:
    if answer.error:
        return f"{label}: error: {answer.error}"
    species = ", ".join(f"{name} {p:.3f}" for name, p in answer.species_probs.items())
    top = ", ".join(f"{name} {p:.3f}" for name, p in answer.top_k)
    breed = f"breed {answer.breed} {answer.breed_prob:.3f}"
    return f"{label}: {answer.species} ({species}); {breed}; top-{len(answer.top_k)}: {top}"
