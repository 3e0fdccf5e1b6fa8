#!/usr/bin/env python3
"""Wide-band PESQ (ITU-T P.862.2, PyPI `pesq`) of a degraded speech recording against its source.

usage: score.py REF.wav DEG.wav

Both files: 16-bit mono PCM at 16 kHz (tests/tests/speech.rs converts with `csps-loadgen
codec-chain --codecs ""`). A recording from a phone starts with the silence before the audio
arrived and ends with the silence after it: the script finds the delay by cross-correlation and
scores the stretch of the recording that lines up with the source (PESQ still aligns the rest
itself). Prints one JSON object:
  pesq            PESQ-WB MOS-LQO of the aligned recording against the source
  delay_ms        where the source starts in the recording
  above_4k_share  share of the aligned recording's energy above 4 kHz (what 8 kHz audio cannot carry)
  ref_above_4k_share  the same for the source
"""

import json
import sys
import wave

import numpy as np
from pesq import pesq

RATE = 16000


def read(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: want 16 kHz mono 16-bit, got {w.getframerate()} Hz, "
                     f"{w.getnchannels()} channels, {8 * w.getsampwidth()} bits")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def delay(ref, deg):
    """Samples by which `deg` lags `ref` (the peak of their cross-correlation, 0 or more)."""
    n = 1 << int(np.ceil(np.log2(len(ref) + len(deg))))
    corr = np.fft.irfft(np.fft.rfft(deg, n) * np.conj(np.fft.rfft(ref, n)), n)
    return int(np.argmax(corr[: len(deg)]))


def above_4k_share(x):
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / RATE)
    total = power.sum()
    return float(power[freqs > 4000].sum() / total) if total > 0 else 0.0


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ref, deg = read(sys.argv[1]), read(sys.argv[2])
    lag = delay(ref, deg)
    aligned = deg[lag: lag + len(ref)]
    aligned = np.pad(aligned, (0, len(ref) - len(aligned)))
    print(json.dumps({
        "pesq": round(float(pesq(RATE, ref, aligned, "wb")), 3),
        "delay_ms": round(1000.0 * lag / RATE, 1),
        "above_4k_share": above_4k_share(aligned),
        "ref_above_4k_share": above_4k_share(ref),
    }))


if __name__ == "__main__":
    main()
