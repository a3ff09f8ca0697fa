"""Replay of the base corpora in every retraining batch, so the model does not forget what it knew.

Speech: RAVDESS train actors 1-16; text: GoEmotions-ekman train (single-label) + MELD train; face: FER2013
train. Only the branches being retrained are loaded. The dev/val splits the gate judges on are never replayed.
Draws come from a generator the trainer seeds per step, so a resumed run replays exactly the same examples.

With a teacher (attach_teacher), a replayed example's target is (1 - alpha) x its label + alpha x the champion's
own probabilities for it, taken before training starts (learning without forgetting, Li & Hoiem 2016): the
challenger is held to what the champion answered on the base corpora, not only to their labels. ASED adaptation
bench (bench/RESULTS.md, 3 seeds): label-only replay of 16 per batch lost 4.2 points of RAVDESS dev accuracy at 200
corrections; alpha 0.8 with 48 per batch (the defaults) loses 1.7, for a smaller gain on the new speakers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.model import EmotionModel
from train.corpora import SPEECH_TRAIN_ACTORS, Example, fer2013_arrays, goemotions, meld, ravdess
from train.corrections import CorrectionItem, one_hot
from train.evaluate import subsample
from train.fit_speech import load_clips

log = logging.getLogger(__name__)


@dataclass
class ReplayPool:
    """Base-corpus examples per modality; audio is decoded on first use and kept."""

    speech: list[Example] = field(default_factory=list)
    text: list[tuple[str, int]] = field(default_factory=list)
    face: tuple[np.ndarray, np.ndarray] | None = None  # normalised crops (N, 48, 48) float32, labels (N,)
    teacher: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (N, 7) champion probabilities
    distill: float = 0.0  # alpha: share of the teacher's probabilities in a replayed target
    _audio: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, data: Path, modalities: tuple[str, ...], limit: int = 0, seed: int = 0) -> ReplayPool:
        """limit > 0: a fixed random subset of that many examples per modality (fast runs, CI)."""
        data = Path(data)
        pool = cls()
        if "speech" in modalities:
            clips = ravdess(data / "ravdess-speech-16k", SPEECH_TRAIN_ACTORS)
            pool.speech = subsample(clips, limit, seed)
        if "text" in modalities:
            texts = goemotions(data / "text" / "goemotions-ekman" / "train.tsv", single_label_only=True)
            texts += meld(data / "text" / "meld" / "train_sent_emo.csv")
            pool.text = [(e.text, e.label) for e in subsample(texts, limit, seed)]
        if "face" in modalities:
            from backend.face import normalize_face

            images, labels = fer2013_arrays(data / "faces" / "fer2013_train.npz")
            keep = np.array(subsample(list(range(len(images))), limit, seed))
            crops = np.stack([normalize_face(images[i]) for i in keep]).astype(np.float32)
            pool.face = (crops, labels[keep])
        log.info(
            "replay pool: %d speech, %d text, %d face examples", len(pool.speech), len(pool.text), pool.size("face")
        )
        return pool

    def size(self, modality: str) -> int:
        if modality == "face":
            return 0 if self.face is None else len(self.face[1])
        return len(getattr(self, modality))

    def sample(self, modality: str, n: int, rng: np.random.Generator) -> list[CorrectionItem]:
        """n examples of one modality as items (one-hot target, weight 1, no hard negative)."""
        size = self.size(modality)
        if n <= 0 or size == 0:
            return []
        picks = rng.choice(size, size=min(n, size), replace=False).tolist()
        return [self._item(modality, i) for i in picks]

    def attach_teacher(self, model: EmotionModel, alpha: float, batch: int = 256) -> None:
        """The champion's probabilities for every example of the loaded modalities (model in eval, no gradients)."""
        from backend.branches import face_eval_logits, speech_forward_batched, text_forward

        if alpha <= 0:
            return
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            if self.speech:
                audio = [self._wave(i) for i in range(len(self.speech))]
                self.teacher["speech"] = speech_forward_batched(model, audio).softmax(-1).numpy()
            if self.text:
                texts = [t for t, _ in self.text]
                parts = [
                    text_forward(model, texts[a : a + batch])[0].float().cpu() for a in range(0, len(texts), batch)
                ]
                self.teacher["text"] = torch.cat(parts).softmax(-1).numpy()
            if self.face is not None:
                self.teacher["face"] = face_eval_logits(model, self.face[0]).softmax(-1).numpy()
        model.train(was_training)
        self.distill = alpha
        log.info("replay targets: %.2f x label + %.2f x champion (%s)", 1 - alpha, alpha, ", ".join(self.teacher))

    def _target(self, modality: str, i: int, label: int) -> np.ndarray:
        target = one_hot(label)
        if modality not in self.teacher:
            return target
        return ((1.0 - self.distill) * target + self.distill * self.teacher[modality][i]).astype(np.float32)

    def _wave(self, i: int) -> np.ndarray:
        if i not in self._audio:
            self._audio[i] = load_clips([self.speech[i]])[0]
        return self._audio[i]

    def _item(self, modality: str, i: int) -> CorrectionItem:
        if modality == "speech":
            target = self._target("speech", i, self.speech[i].label)
            return CorrectionItem(f"replay:speech:{i}", target, audio=self._wave(i))
        if modality == "text":
            text, label = self.text[i]
            return CorrectionItem(f"replay:text:{i}", self._target("text", i, label), text=text)
        crops, labels = self.face
        return CorrectionItem(f"replay:face:{i}", self._target("face", i, int(labels[i])), faces=crops[i : i + 1])
