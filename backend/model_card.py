"""The model card (README.md of a model folder): YAML metadata with model-index eval results + prose."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from backend.model_config import EmotionConfig

LICENCES = (
    "RAVDESS speech (CC BY-NC-SA 4.0, Livingstone & Russo 2018): the checkpoint inherits NonCommercial-ShareAlike. "
    "ASED Amharic speech (research use, no licence file published; cite Retta et al. 2022, ACM TALLIP, "
    "doi 10.1145/3529759). "
    "GoEmotions (Apache-2.0 repo, Google data terms), MELD (GPL-3.0), FER2013 (research use), "
    "NRC EmoLex (research use), Whisper (MIT), all-MiniLM-L6-v2 (Apache-2.0)."
)


def eval_results(metrics: dict[str, dict]) -> list[EvalResult]:
    """metrics: dataset name -> {"task": ..., "dataset_type": ..., "split": ..., metric: value, ...}."""
    results = []
    for name, m in metrics.items():
        for metric in ("accuracy", "uar", "macro_f1", "weighted_f1"):
            if metric in m and m[metric] is not None:
                results.append(
                    EvalResult(
                        task_type="audio-classification"
                        if m.get("modality") == "speech"
                        else "text-classification"
                        if m.get("modality") == "text"
                        else "image-classification",
                        dataset_type=m.get("dataset_type", name),
                        dataset_name=name,
                        dataset_split=m.get("split", "dev"),
                        metric_type=metric,
                        metric_name=metric,
                        metric_value=round(float(m[metric]), 4),
                    )
                )
    return results


def render_card(config: EmotionConfig, metrics: dict[str, dict], body: str) -> str:
    """A full README.md: front matter (license, tags, model-index) + body markdown."""
    data = ModelCardData(
        license="cc-by-nc-sa-4.0",
        language=["en"],
        library_name="pytorch",
        tags=["emotion-recognition", "speech-emotion-recognition", "multimodal", "whisper", "emotion-studio"],
        model_name=f"emotion-studio-{config.version}",
        eval_results=eval_results(metrics) or None,
        base_model=None,
    )
    header = f"# Emotion studio model {config.version}\n\nParent version: {config.parent_version or 'none'}\n\n"
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + header + body)
    return str(card)
