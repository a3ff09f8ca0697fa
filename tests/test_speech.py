"""Speech backbone: log-mel parity, encoder states (trimmed and 30 s), gradients, SSL encoders, ASR."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    BertConfig,
    BertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WhisperFeatureExtractor,
)

from backend import speech
from backend.errors import ModelError

SHARED = Path(os.environ.get("EMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RAVDESS = SHARED / "ravdess-speech-16k"
STATEMENT_1 = RAVDESS / "Actor_01" / "03-01-01-01-01-01-01.flac"  # "Kids are talking by the door"
STATEMENT_2 = RAVDESS / "Actor_02" / "03-01-05-01-02-01-02.flac"  # "Dogs are sitting by the door", angry


def read(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16_000 and audio.ndim == 1
    return audio


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> speech.SpeechBackbone:
    return speech.tiny_whisper_backbone(tmp_path_factory.mktemp("tiny"))


def test_log_mel_matches_whisper_feature_extractor():
    clips = [read(STATEMENT_1), read(STATEMENT_2)]
    reference = WhisperFeatureExtractor()(clips, sampling_rate=16_000, return_tensors="pt").input_features
    batch = torch.zeros(2, speech.N_SAMPLES)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = torch.from_numpy(clip)
    ours = speech.log_mel(batch)
    assert ours.shape == reference.shape == (2, 80, 3000)
    assert (ours - reference).abs().max() < 1e-4


def test_log_mel_shapes_for_short_audio_and_more_mels():
    assert speech.log_mel(torch.zeros(3, 16_000)).shape == (3, 80, 100)
    assert speech.log_mel(torch.randn(1, 8_000), n_mels=128).shape == (1, 128, 50)


def test_tiny_backbone_comes_back_from_its_folder(tiny):
    assert (tiny.kind, tiny.hidden_size, tiny.num_layers, tiny.sampling_rate) == ("whisper", 64, 2, 16_000)
    assert tiny.dtype == torch.float32 and not tiny.model.training and tiny.has_asr
    tokenizer = tiny.processor.tokenizer
    gc = tiny.model.generation_config
    assert gc.lang_to_id["<|fr|>"] == tokenizer.convert_tokens_to_ids("<|fr|>")


def test_trimmed_states_have_clip_lengths_and_masks(tiny):
    states, mask = speech.encoder_hidden_states(tiny, [tone(1.0), tone(2.5)])
    assert states.shape == (2, 3, 127, 64)  # 2.5 s + N_FFT margin -> 253 -> 254 mel frames -> 127 encoder frames
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [50, 125]
    assert mask[0, :50].all() and not mask[0, 50:].any()


def test_bucketed_batches_pad_to_whole_seconds_with_the_same_mask(tiny):
    states, mask = speech.encoder_hidden_states(tiny, [tone(1.0), tone(2.3)], frame_multiple=100)
    assert states.shape[2] == 150  # 2.3 s + N_FFT margin -> 233 mel frames -> padded to 300 -> 150 encoder frames
    assert mask.sum(1).tolist() == [50, 115]
    with pytest.raises(AssertionError, match="even"):
        speech.encoder_hidden_states(tiny, [tone(1.0)], frame_multiple=25)


def test_short_batch_is_padded_to_min_frames(tiny):
    states, mask = speech.encoder_hidden_states(tiny, [tone(0.2)])
    assert states.shape[2] == speech.MIN_FRAMES // 2 and mask.sum().item() == 10


def test_unmasked_states_equal_transformers_encoder(tiny):
    clips = [tone(1.0), tone(2.5, 440.0)]
    wave = torch.zeros(2, speech.N_SAMPLES)
    for row, clip in enumerate(clips):
        wave[row, : len(clip)] = torch.from_numpy(clip)
    encoder = tiny.model.model.encoder
    with torch.no_grad():
        states = speech.whisper_encoder_states(encoder, speech.log_mel(wave))
        out = encoder(speech.log_mel(wave), output_hidden_states=True)
    reference = torch.stack(out.hidden_states, dim=1)
    assert states.shape == reference.shape == (2, 3, 1500, 64)
    assert torch.allclose(states, reference, atol=1e-5)


def test_trimmed_states_equal_30_s_padded_states_inside_the_clip(tiny):
    """Attention never sees padding, so trimming is only a speed-up: every layer agrees inside the clip."""
    clips = [tone(1.0), tone(2.5, 440.0)]
    with torch.no_grad():
        trimmed, mask_t = speech.encoder_hidden_states(tiny, clips, trim=True)
        padded, mask_p = speech.encoder_hidden_states(tiny, clips, trim=False)
    assert padded.shape == (2, 3, 1500, 64) and mask_p.sum(1).tolist() == mask_t.sum(1).tolist() == [50, 125]
    for row, n in enumerate([50, 125]):
        assert torch.allclose(trimmed[row, :, :n], padded[row, :, :n], atol=1e-5)


@pytest.mark.parametrize("frame_multiple", [2, 100])
def test_a_clip_alone_equals_the_same_clip_in_any_batch(tiny, frame_multiple):
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(16_000 * s)).astype(np.float32) * 0.1 for s in (0.5, 3.3, 0.8, 7.1)]
    with torch.no_grad():
        batch, mask = speech.encoder_hidden_states(tiny, clips, frame_multiple=frame_multiple)
        for row, clip in enumerate(clips):
            alone, alone_mask = speech.encoder_hidden_states(tiny, [clip])
            n = int(alone_mask.sum())
            assert n == int(mask[row].sum())
            assert (batch[row, :, :n] - alone[0, :, :n]).abs().max().item() < 1e-4


def test_unmasked_short_clip_would_depend_on_its_batch(tiny):
    """The failure the mask prevents: without it, a short clip's states change with the batch's longest clip."""
    short, long = tone(0.5), tone(6.0, 330.0)
    encoder = tiny.model.model.encoder
    with torch.no_grad():
        wave_alone = torch.nn.functional.pad(torch.from_numpy(short)[None], (0, 200 * 160 - len(short)))
        wave_batch = torch.zeros(2, 700 * 160)
        wave_batch[0, : len(short)], wave_batch[1, : len(long)] = torch.from_numpy(short), torch.from_numpy(long)
        alone = speech.whisper_encoder_states(encoder, speech.log_mel(wave_alone))
        batch = speech.whisper_encoder_states(encoder, speech.log_mel(wave_batch))
    assert (alone[0, -1, :25] - batch[0, -1, :25]).abs().max().item() > 1e-3


def test_tensor_input_equals_list_input(tiny):
    clips = [tone(1.5), tone(1.5, 330.0)]
    with torch.no_grad():
        from_list, _ = speech.encoder_hidden_states(tiny, clips)
        from_tensor, mask = speech.encoder_hidden_states(tiny, torch.from_numpy(np.stack(clips)))
    assert torch.allclose(from_list, from_tensor) and mask.sum(1).tolist() == [75, 75]


def test_list_of_tensors_and_mel_transform(tiny):
    clips = [tone(1.0), tone(0.6, 330.0)]
    seen = []

    def silence_first_clip(mel: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(mel.shape))
        return torch.cat([torch.full_like(mel[:1], -1.5), mel[1:]])

    with torch.no_grad():
        base, mask = speech.encoder_hidden_states(tiny, clips)
        tensors, _ = speech.encoder_hidden_states(tiny, [torch.from_numpy(c) for c in clips])
        changed, _ = speech.encoder_hidden_states(tiny, clips, mel_transform=silence_first_clip)
    assert torch.allclose(base, tensors) and mask.sum(1).tolist() == [50, 30]
    assert seen == [(2, 80, 104)]  # 1 s + the N_FFT margin, rounded up to even
    assert not torch.allclose(changed[0], base[0]) and torch.allclose(changed[1], base[1], atol=1e-6)


def test_gradients_flow_into_the_encoder(tiny):
    states, mask = speech.encoder_hidden_states(tiny, [tone(1.0), tone(0.5)])
    assert states.requires_grad
    states[:, -1][mask].pow(2).mean().backward()
    encoder = tiny.model.model.encoder
    assert encoder.conv1.weight.grad is not None and encoder.conv1.weight.grad.abs().sum() > 0
    assert encoder.layers[-1].fc2.weight.grad.abs().sum() > 0
    tiny.model.zero_grad(set_to_none=True)


def test_clips_over_30_seconds_are_refused_by_the_encoder(tiny):
    with pytest.raises(ValueError, match="30 s"):
        speech.encoder_hidden_states(tiny, [np.zeros(31 * 16_000, np.float32)])


def test_transcribe_returns_one_string_per_clip(tiny):
    texts = speech.transcribe(tiny, [tone(1.0), tone(2.0)], language="en", max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) and t == t.strip() for t in texts)
    assert len(speech.transcribe(tiny, [tone(1.0)], max_new_tokens=2)) == 1  # language detection path
    assert speech.transcribe(tiny, []) == []


def test_long_clips_are_transcribed_in_30_second_pieces(tiny, monkeypatch):
    seen = []

    def fake_generate(backbone, pieces, language, max_new):
        seen.extend(len(p) for p in pieces)
        return [f" w{len(seen) - len(pieces) + i} " for i in range(len(pieces))]

    monkeypatch.setattr(speech, "_generate", fake_generate)
    texts = speech.transcribe(tiny, [np.zeros(35 * 16_000, np.float32), tone(1.0)])
    assert seen == [speech.N_SAMPLES, 5 * 16_000, 16_000]
    assert texts == ["w0 w1", "w2"]


def test_encoder_only_checkpoint_gives_features_but_no_asr(tiny, tmp_path):
    """Training machines get fp16 encoder-only packs; strict about the encoder, tolerant of no decoder."""
    folder = tmp_path / "encoder-only"
    tiny.model.save_pretrained(folder)
    tiny.processor.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    encoder = {k: v.half() for k, v in weights.items() if k.startswith("model.encoder.")}
    save_file(encoder, folder / "model.safetensors", metadata={"format": "pt"})
    backbone = speech.load_speech_backbone(str(folder), cache=tmp_path)
    assert backbone.kind == "whisper" and not backbone.has_asr and backbone.dtype == torch.float32
    clips = [tone(1.0)]
    with torch.no_grad():
        want, _ = speech.encoder_hidden_states(tiny, clips)
        got, _ = speech.encoder_hidden_states(backbone, clips)
    assert torch.allclose(got, want, atol=1e-2)  # fp16 rounding of the weights only
    with pytest.raises(ModelError, match="no ASR"):
        speech.transcribe(backbone, clips)
    del encoder["model.encoder.conv1.weight"]
    save_file(encoder, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="does not match"):
        speech.load_speech_backbone(str(folder), cache=tmp_path)


@pytest.fixture(scope="module")
def tiny_ssl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ssl")
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(folder)
    return folder


def test_ssl_backbone_states_and_mask(tiny_ssl_dir, tmp_path):
    backbone = speech.load_speech_backbone(str(tiny_ssl_dir), cache=tmp_path)
    assert (backbone.kind, backbone.hidden_size, backbone.num_layers) == ("ssl", 32, 2)
    clips = [tone(0.5), tone(1.0, 330.0)]
    with torch.no_grad():
        states, mask = speech.encoder_hidden_states(backbone, clips)
        alone, _ = speech.encoder_hidden_states(backbone, clips[:1])
    lengths = backbone.model._get_feat_extract_output_lengths(torch.tensor([8_000, 16_000]))
    assert states.shape == (2, 3, int(lengths[1]), 32)
    assert mask.sum(1).tolist() == lengths.tolist()
    valid = int(lengths[0])  # the attention mask keeps padding out of the shorter clip
    assert torch.allclose(states[0, :, :valid], alone[0, :, :valid], atol=1e-4)


def test_ssl_normalisation_matches_its_feature_extractor(tiny_ssl_dir, tmp_path):
    backbone = speech.load_speech_backbone(str(tiny_ssl_dir), cache=tmp_path)
    clips = [tone(0.5), tone(1.0, 330.0) + 0.1]
    inputs = backbone.processor(clips, sampling_rate=16_000, padding=True, return_tensors="pt")
    captured = []
    backbone.model.register_forward_pre_hook(lambda module, args, kwargs: captured.append(args[0]), with_kwargs=True)
    with torch.no_grad():
        speech.encoder_hidden_states(backbone, clips)
    assert torch.allclose(captured[0], inputs.input_values, atol=1e-4)


def test_ssl_backbone_has_no_asr(tiny_ssl_dir, tmp_path):
    backbone = speech.load_speech_backbone(str(tiny_ssl_dir), cache=tmp_path)
    with pytest.raises(ModelError, match="no ASR"):
        speech.transcribe(backbone, [tone(1.0)])


def test_unloadable_backbones_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="cannot load"):
        speech.load_speech_backbone(str(tmp_path / "missing"), cache=tmp_path)
    with pytest.raises(ModelError, match="cannot load"):
        speech.load_speech_backbone("no-such-org/no-such-speech-model", cache=tmp_path)
    text_model = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(text_model)
    with pytest.raises(ModelError, match="not a raw-audio speech encoder"):
        speech.load_speech_backbone(str(text_model), cache=tmp_path)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory: pytest.TempPathFactory) -> speech.SpeechBackbone:
    return speech.load_speech_backbone("whisper-base", cache=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", None])
def test_whisper_base_transcribes_ravdess(whisper_base, language):
    texts = speech.transcribe(whisper_base, [read(STATEMENT_1), read(STATEMENT_2)], language=language)
    assert "kids are talking by the door" in _normalize(texts[0])
    assert "dogs are sitting by the door" in _normalize(texts[1])


@pytest.mark.slow
def test_whisper_base_states_trimmed_and_padded(whisper_base):
    clip = read(STATEMENT_1)
    with torch.no_grad():
        trimmed, mask_t = speech.encoder_hidden_states(whisper_base, [clip], trim=True)
        padded, mask_p = speech.encoder_hidden_states(whisper_base, [clip], trim=False)
    assert trimmed.shape[:2] == padded.shape[:2] == (1, 7) and trimmed.shape[-1] == 512
    assert padded.shape[2] == 1500 and trimmed.shape[2] < 200
    valid = int(mask_t.sum())
    assert valid == int(mask_p.sum()) == int(np.ceil(np.ceil(len(clip) / 160) / 2))
    pooled_t = trimmed[0, -1, :valid].mean(0)
    pooled_p = padded[0, -1, :valid].mean(0)
    assert torch.allclose(pooled_t, pooled_p, atol=1e-3)  # padding is masked: trimming is only a speed-up


def test_big_padded_batches_are_filled_by_threads_and_work_after_fork(monkeypatch):
    """pad_on_host splits big batches over a thread pool; every row is its clip then zeros, also in a forked
    child (decoding workers): the child builds its own pool instead of waiting on threads it never had."""
    import multiprocessing

    from backend.speech import PARALLEL_FILL_SAMPLES, pad_on_host

    monkeypatch.setattr(speech, "FILL_THREADS", 3)  # threads even on a 2-core box (the default is half the CPUs)

    rng = np.random.default_rng(0)
    sizes = [int(x) for x in rng.integers(1, 480_000, size=24)]
    clips = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    assert len(clips) * max(sizes) >= PARALLEL_FILL_SAMPLES  # the threaded path
    host, lengths = pad_on_host(clips)
    assert lengths.tolist() == sizes
    for row, clip in zip(host.numpy(), clips):
        assert np.array_equal(row[: len(clip)], clip) and not row[len(clip) :].any()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_pad_sum_in_child, args=(clips, queue))
    child.start()
    try:
        assert queue.get(timeout=60) == float(host.numpy().astype(np.float64).sum())
    finally:
        child.join(timeout=10)


def _pad_sum_in_child(clips: list, queue) -> None:
    from backend.speech import pad_on_host

    # numpy only in the child: torch's OpenMP pool does not survive a fork (a forked worker decodes, never sums)
    queue.put(float(pad_on_host(clips)[0].numpy().astype(np.float64).sum()))
