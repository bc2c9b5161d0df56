"""Resemblyzer's pretrained speaker encoder and real speech to feed it, for the tests.

`VoiceEncoder` is resemblyzer 0.1.4's network (its state_dict loads into it), `voice_encoder()` loads the
weights shipped in its wheel, and `speech_partials()` makes its input the way resemblyzer does, from
the alsa-utils recordings that `edgesdk.fixtures.speech_chunks` uses, without librosa.
"""

import numpy as np
import torch
from torch import nn

from edgesdk.fixtures import SPOKEN_WORDS, fetch

RATE, WINDOW, HOP, MELS, PARTIAL = 16000, 400, 160, 40, 160  # resemblyzer/hparams.py: 25 ms, 10 ms, 1.6 s


class VoiceEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network: mels (N, frames, 40) -> unit-norm embeddings (N, 256)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))  # the last layer's final hidden state
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def voice_encoder():
    """The pretrained encoder in eval mode."""
    checkpoint = torch.load(fetch("resemblyzer_encoder"), map_location="cpu", weights_only=True)
    model = VoiceEncoder()
    # The checkpoint also holds the GE2E loss's similarity_weight/bias; resemblyzer loads with
    # strict=False to drop them. Keep exactly the module's keys so a missing one still fails.
    model.load_state_dict({k: v for k, v in checkpoint["model_state"].items() if k in model.state_dict()})
    return model.eval()


def _hz_to_mel(f):
    # Slaney's scale (librosa's htk=False): linear below 1 kHz, logarithmic above.
    f = np.asarray(f, np.float64)
    return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27), f * 3 / 200)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15, 1000 * np.exp(np.log(6.4) / 27 * (m - 15)), m * 200 / 3)


def mel_filterbank(rate=RATE, n_fft=WINDOW, n_mels=MELS):
    """librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels) with its defaults: triangles on the Slaney
    mel scale from 0 Hz to rate / 2, each scaled to unit area (norm="slaney"); float32 (n_mels, 1 + n_fft // 2)."""
    bins = np.fft.rfftfreq(n_fft, 1 / rate)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0), _hz_to_mel(rate / 2), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(wav):
    """resemblyzer.audio.wav_to_mel_spectrogram without librosa: float32 (frames, 40) mel power frames.

    As librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160, n_mels=40) computes it:
    centred frames (zero padding of n_fft // 2 each side, librosa >= 0.10's default; 0.9 reflected), a
    periodic Hann window, |STFT|^2, then the mel filterbank. Not a log-mel spectrogram.
    """
    from scipy.signal import get_window
    padded = np.pad(np.asarray(wav, np.float64), WINDOW // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[::HOP]
    power = np.abs(np.fft.rfft(frames * get_window("hann", WINDOW, fftbins=True), axis=1)) ** 2
    return (power @ mel_filterbank().T.astype(np.float64)).astype(np.float32)


def _speech(rate=RATE):
    """The eight alsa-utils phrases ("Front left", ...) back to back at `rate`, float64 in [-1, 1]. One voice;
    Noise.wav, a noise burst, is left out."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    names = ["Front_Left", "Front_Center", "Front_Right", "Side_Left", "Side_Right", "Rear_Left",
             "Rear_Center", "Rear_Right"]
    missing = [w for w in names if not (SPOKEN_WORDS / f"{w}.wav").is_file()]
    if missing:
        raise FileNotFoundError(f"{SPOKEN_WORDS}/{missing[0]}.wav is missing: install Debian's alsa-utils "
                                f"(`make test-deps` does).")
    clips = []
    for name in names:
        r, a = wavfile.read(SPOKEN_WORDS / f"{name}.wav")
        clips.append(resample_poly(a.astype(np.float64) / 32768.0, rate, r))
    return np.concatenate(clips)


def speech_partials(n=None, step=4):
    """Real speech as resemblyzer's embed_utterance feeds its encoder: float32 (N, 160, 40), in time order.

    The alsa-utils phrases (11.4 s, one voice) are raised to -30 dBFS if quieter (resemblyzer's
    normalize_volume(wav, -30, increase_only=True)), cut into 1.6 s partials every `step` frames with
    resemblyzer's compute_partial_slices (step 4 = rate 25/s gives 246 partials; its default rate 1.3/s
    is step 77), the wave zero-padded to the last partial and turned into mel frames. Resemblyzer's VAD
    silence trimming (webrtcvad) is skipped, and the resampling is scipy's resample_poly, not librosa's
    soxr. n picks n partials evenly spread over the utterance; None returns all.
    """
    wav = _speech()
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(wav ** 2)))  # the int16 scaling in resemblyzer cancels out
    if rms_dbfs < -30:
        wav = wav * 10 ** ((-30 - rms_dbfs) / 20)
    # compute_partial_slices(len(wav), rate=RATE / HOP / step, min_coverage=0.75)
    frames = int(np.ceil((len(wav) + 1) / HOP))
    starts = list(range(0, max(1, frames - PARTIAL + step + 1), step))
    if len(starts) > 1 and (len(wav) - starts[-1] * HOP) / (PARTIAL * HOP) < 0.75:
        starts = starts[:-1]  # the last partial would be mostly padding
    wav = np.pad(wav, (0, max(0, (starts[-1] + PARTIAL) * HOP - len(wav))))
    mel = mel_spectrogram(wav)
    partials = np.stack([mel[s:s + PARTIAL] for s in starts])
    if n is not None:
        partials = partials[np.linspace(0, len(partials) - 1, n).round().astype(int)]
    return partials
