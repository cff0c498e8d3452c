#!/usr/bin/env python3
"""Render the bundled demo clips of `mambaseq train audio`: public-domain melodies, entered by hand
below, played by a small additive piano-like synthesizer (numpy only; no soundfont, no samples).

Every piece is rendered twice, in its own key and tempo and transposed with another tempo, as
`<piece>_<n>.flac` (16 kHz, mono, 16-bit FLAC); the recipe `audio-tiny-cpu` splits by piece, so
both renditions of a piece always land in the same split. The output is deterministic.

Usage:  python scripts/make_demo_piano.py mambaseq/tasks/audio/data [--rate 16000] [--seconds 2.4]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import soundfile as sf

# Each piece: (name, beats per minute, voices). A voice is a string of NOTE:BEATS tokens (NOTE like
# C4, F#3, Bb2, or r for a rest; BEATS defaults to 1); "|" marks bars for the reader only.
PIECES: list[tuple[str, float, list[str]]] = [
    # Beethoven, Symphony No. 9, finale theme ("Ode to Joy"), 1824.
    ("ode-to-joy", 132, [
        "E4 E4 F4 G4 | G4 F4 E4 D4 | C4 C4 D4 E4 | E4:1.5 D4:0.5 D4:2 | "
        "E4 E4 F4 G4 | G4 F4 E4 D4 | C4 C4 D4 E4 | D4:1.5 C4:0.5 C4:2",
        "C3:2 G2:2 | C3:2 G2:2 | C3:2 C3:2 | G2:4 | C3:2 G2:2 | C3:2 G2:2 | C3:2 C3:2 | G2:2 C3:2"]),
    # "Ah! vous dirai-je, maman", French folk tune (1761), known as "Twinkle, Twinkle, Little Star".
    ("twinkle", 120, [
        "C4 C4 G4 G4 | A4 A4 G4:2 | F4 F4 E4 E4 | D4 D4 C4:2 | G4 G4 F4 F4 | E4 E4 D4:2",
        "C3:2 C3:2 | F3:2 C3:2 | F3:2 C3:2 | G2:2 C3:2 | C3:2 F3:2 | C3:2 G2:2"]),
    # "Frère Jacques", French round (18th century), with the second voice entering after two bars.
    ("frere-jacques", 126, [
        "C4 D4 E4 C4 | C4 D4 E4 C4 | E4 F4 G4:2 | E4 F4 G4:2 | "
        "G4:0.5 A4:0.5 G4:0.5 F4:0.5 E4 C4 | G4:0.5 A4:0.5 G4:0.5 F4:0.5 E4 C4",
        "r:8 | C3 D3 E3 C3 | C3 D3 E3 C3 | E3 F3 G3:2 | E3 F3 G3:2"]),
    # Minuet in G major, BWV Anh. 114 (Christian Petzold, c. 1725).
    ("minuet-in-g", 138, [
        "D5 G4:0.5 A4:0.5 B4:0.5 C5:0.5 | D5 G4 G4 | E5 C5:0.5 D5:0.5 E5:0.5 F#5:0.5 | G5 G4 G4 | "
        "C5 D5:0.5 C5:0.5 B4:0.5 A4:0.5 | B4 C5:0.5 B4:0.5 A4:0.5 G4:0.5 | F#4 G4:0.5 A4:0.5 B4:0.5 G4:0.5 | A4:3",
        "G3:2 A3 | B3:3 | C4:3 | B3:3 | A3:3 | G3:3 | D4 B3 G3 | D4 D3 C4"]),
    # "Greensleeves", English folk song (16th century).
    ("greensleeves", 150, [
        "A4 | C5:2 D5 | E5:1.5 F5:0.5 E5 | D5:2 B4 | G4:1.5 A4:0.5 B4 | C5:2 A4 | A4:1.5 G#4:0.5 A4 | "
        "B4:2 G#4 | E4:2 A4 | C5:2 D5 | E5:1.5 F5:0.5 E5 | D5:2 B4 | G4:1.5 A4:0.5 B4 | C5:1.5 B4:0.5 A4 | "
        "G#4:1.5 F#4:0.5 G#4 | A4:3",
        "r | A2:3 | C3:3 | G2:3 | G2:3 | A2:3 | F2:3 | E2:3 | E2:3 | A2:3 | C3:3 | G2:3 | G2:3 | A2:3 | "
        "E2:3 | A2:3"]),
    # "New Britain" (1829), the tune of "Amazing Grace".
    ("amazing-grace", 100, [
        "D4 | G4:2 B4:0.5 G4:0.5 | B4:2 A4 | G4:2 E4 | D4:2 D4 | G4:2 B4:0.5 G4:0.5 | B4:2 A4 | D5:3 | "
        "D5:2 B4 | D5:1.5 B4:0.5 G4 | B4:2 A4 | G4:2 E4 | D4:2 D4 | G4:2 B4:0.5 G4:0.5 | B4:2 A4 | G4:3",
        "r | G2:3 | G2:3 | C3:3 | G2:3 | G2:3 | D3:3 | D3:3 | G2:3 | G2:3 | G2:3 | C3:3 | G2:3 | G2:3 | "
        "D3:3 | G2:3"]),
    # "Au clair de la lune", French folk song (18th century).
    ("au-clair-de-la-lune", 132, [
        "C5 C5 C5 D5 | E5:2 D5:2 | C5 E5 D5 D5 | C5:4 | C5 C5 C5 D5 | E5:2 D5:2 | C5 E5 D5 D5 | C5:4 | "
        "D5 D5 D5 D5 | A4:2 A4:2 | D5 C5 B4 A4 | G4:4",
        "C3:2 G3:2 | C3:2 G2:2 | C3:2 G2:2 | C3:4 | C3:2 G3:2 | C3:2 G2:2 | C3:2 G2:2 | C3:4 | "
        "G2:2 D3:2 | F3:2 F3:2 | D3:2 D3:2 | G2:4"]),
    # Brahms, "Wiegenlied", Op. 49 No. 4, 1868.
    ("brahms-lullaby", 108, [
        "E4:0.5 E4:0.5 | G4:2 E4:0.5 E4:0.5 | G4:2 E4:0.5 G4:0.5 | C5 B4:1.5 A4:0.5 | A4 G4 D4:0.5 E4:0.5 | "
        "F4 D4 D4:0.5 E4:0.5 | F4:2 D4:0.5 F4:0.5 | B4:0.5 A4:0.5 G4 B4 | C5:3",
        "r | C3:3 | C3:3 | F3:3 | C3:3 | G2:3 | G2:3 | G2:3 | C3:3"]),
    # James Lord Pierpont, "Jingle Bells", 1857 (refrain).
    ("jingle-bells", 144, [
        "E4 E4 E4:2 | E4 E4 E4:2 | E4 G4 C4:1.5 D4:0.5 | E4:4 | F4 F4 F4:1.5 F4:0.5 | F4 E4 E4 E4:0.5 E4:0.5 | "
        "E4 D4 D4 E4 | D4:2 G4:2",
        "C3:2 G2:2 | C3:2 G2:2 | C3:2 G2:2 | C3:4 | F2:2 C3:2 | F2:2 C3:2 | G2:2 D3:2 | G2:2 B2:2"]),
    # Beethoven, "Für Elise", WoO 59, 1810 (opening).
    ("fur-elise", 70, [
        "E5:0.5 D#5:0.5 | E5:0.5 D#5:0.5 E5:0.5 B4:0.5 D5:0.5 C5:0.5 | A4 r:0.5 C4:0.5 E4:0.5 A4:0.5 | "
        "B4 r:0.5 E4:0.5 G#4:0.5 B4:0.5 | C5 r:0.5 E4:0.5 E5:0.5 D#5:0.5 | "
        "E5:0.5 D#5:0.5 E5:0.5 B4:0.5 D5:0.5 C5:0.5 | A4 r:0.5 C4:0.5 E4:0.5 A4:0.5 | "
        "B4 r:0.5 E4:0.5 C5:0.5 B4:0.5 | A4:3",
        "r:1 | r:3 | A2:0.5 E3:0.5 A3:0.5 r:1.5 | E2:0.5 E3:0.5 G#3:0.5 r:1.5 | A2:0.5 E3:0.5 A3:0.5 r:1.5 | "
        "r:3 | A2:0.5 E3:0.5 A3:0.5 r:1.5 | E2:0.5 E3:0.5 G#3:0.5 r:1.5 | A2:3"]),
    # Johann Pachelbel, Canon in D (late 17th century): the ground bass and the first variations.
    ("pachelbel-canon", 92, [
        "F#5:2 E5:2 | D5:2 C#5:2 | B4:2 A4:2 | B4:2 C#5:2 | D5:2 C#5:2 | B4:2 A4:2 | G4:2 F#4:2 | G4:2 E4:2",
        "D3:2 A2:2 | B2:2 F#2:2 | G2:2 D2:2 | G2:2 A2:2 | D3:2 A2:2 | B2:2 F#2:2 | G2:2 D2:2 | G2:2 A2:2"]),
    # "Scarborough Fair", English folk ballad (traditional).
    ("scarborough-fair", 120, [
        "D4:2 D4 | A4:2 A4 | E4:1.5 F4:0.5 E4 | D4:3 | r A4 C5 | D5:2 C5 | A4 B4 G4 | A4:3 | "
        "r r D5 | D5:2 D5 | C5:2 A4 | A4 G4 F4 | E4 C4:2 | D4:3",
        "D3:3 | D3:3 | C3:3 | D3:3 | D3:3 | F3:3 | G3:3 | D3:3 | D3:3 | D3:3 | F3:3 | F3:3 | C3:3 | D3:3"]),
    # "Row, Row, Row Your Boat", American round (1852), second voice two bars behind.
    ("row-your-boat", 100, [
        "C4:1.5 C4:1.5 | C4 D4:0.5 E4:1.5 | E4 D4:0.5 E4 F4:0.5 | G4:3 | "
        "C5:0.5 C5:0.5 C5:0.5 G4:0.5 G4:0.5 G4:0.5 | E4:0.5 E4:0.5 E4:0.5 C4:0.5 C4:0.5 C4:0.5 | "
        "G4 F4:0.5 E4 D4:0.5 | C4:3",
        "r:6 | C3:1.5 C3:1.5 | C3 D3:0.5 E3:1.5 | E3 D3:0.5 E3 F3:0.5 | G3:3 | "
        "C4:0.5 C4:0.5 C4:0.5 G3:0.5 G3:0.5 G3:0.5 | E3:0.5 E3:0.5 E3:0.5 C3:0.5 C3:0.5 C3:0.5"]),
    # Stephen Foster, "Oh! Susanna", 1848.
    ("oh-susanna", 132, [
        "C4:0.5 D4:0.5 | E4 G4 G4:1.5 A4:0.5 | G4 E4 C4:1.5 D4:0.5 | E4 E4 D4 C4 | D4:3 C4:0.5 D4:0.5 | "
        "E4 G4 G4:1.5 A4:0.5 | G4 E4 C4:1.5 D4:0.5 | E4 E4 D4 D4 | C4:4",
        "r | C3:2 G2:2 | C3:2 G2:2 | C3:2 G2:2 | G2:4 | C3:2 G2:2 | C3:2 G2:2 | G2:2 G2:2 | C3:4"]),
]

# The second rendition of every piece: transposed by these semitones, at this tempo factor.
VARIANT = (-5, 1.15)
NOTE = re.compile(r"^([A-G])([#b]?)(-?\d)$")
STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def midi_number(name: str) -> int:
    match = NOTE.match(name)
    if match is None:
        raise ValueError(f"bad note {name!r}")
    letter, accidental, octave = match.groups()
    return 12 * (int(octave) + 1) + STEPS[letter] + {"": 0, "#": 1, "b": -1}[accidental]


def parse_voice(text: str) -> list[tuple[int | None, float]]:
    """'E4:1.5 r:0.5 | C4' -> [(64, 1.5), (None, 0.5), (60, 1.0)]: (MIDI note or None for a rest, beats)."""
    events = []
    for token in text.replace("|", " ").split():
        name, _, beats = token.partition(":")
        events.append((None if name == "r" else midi_number(name), float(beats or 1)))
    return events


def piano_note(midi: int, seconds: float, rate: int, velocity: float) -> np.ndarray:
    """One struck note, held `seconds` then damped: a sum of slightly stretched partials (string
    stiffness), each a pair of detuned strings, with a fast then slow decay that is quicker for high
    partials and high notes, a 2 ms attack and a 60 ms release."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    release = 0.06
    n = int((seconds + 5 * release) * rate)
    t = np.arange(n) / rate
    stiffness = 1e-4 * 2 ** ((midi - 48) / 24)
    sustain = 2.5 * (261.6 / f0) ** 0.6
    out = np.zeros(n)
    for k in range(1, 9):  # eight partials: enough for the timbre, and the FLAC files stay small
        fk = k * f0 * np.sqrt(1 + stiffness * k * k)
        if fk > 0.45 * rate:
            break
        amplitude = velocity * (1.0 if k == 1 else 0.7 / k ** 1.3) * (1 + 0.5 * (midi < 52) * (k > 1))
        tau = sustain / (1 + 0.5 * (k - 1))
        envelope = 0.65 * np.exp(-t / (0.15 * tau)) + 0.35 * np.exp(-t / tau)
        detune = 2 ** (0.7 / 1200)  # the two strings of a unison, 0.7 cents apart, beat slowly
        phase = 2 * np.pi * fk * t
        out += amplitude * envelope * 0.5 * (np.sin(phase) + np.sin(phase * detune + 0.3 * k))
    out *= np.clip(t / 0.002, 0, 1)
    out *= np.where(t < seconds, 1.0, np.exp(-np.maximum(t - seconds, 0) / release))
    return out


def render(voices: list[str], bpm: float, transpose: int, rate: int, max_seconds: float) -> np.ndarray:
    beat = 60.0 / bpm
    length = int(max_seconds * rate)
    mix = np.zeros(length + rate)
    for v, text in enumerate(voices):
        when = 0.0
        for i, (midi, beats) in enumerate(parse_voice(text)):
            if when >= max_seconds:
                break
            if midi is not None:
                # Melody a little louder than the bass; a gentle accent pattern so repeats differ.
                velocity = (0.9 if v == 0 else 0.6) * (1.0 if i % 4 == 0 else 0.85)
                note = piano_note(midi + transpose, 0.92 * beats * beat, rate, velocity)
                start = int(when * rate)
                end = min(len(mix), start + len(note))
                mix[start:end] += note[: end - start]
            when += beats * beat
    audio = mix[:length]
    fade = int(0.05 * rate)
    audio[-fade:] *= np.linspace(1, 0, fade)
    return 0.8 * audio / np.abs(audio).max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rate", type=int, default=16000)
    ap.add_argument("--seconds", type=float, default=2.4, help="length of each clip (pieces are cut there)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, bpm, voices in PIECES:
        for n, (transpose, speed) in enumerate(((0, 1.0), VARIANT), start=1):
            audio = render(voices, bpm * speed, transpose, args.rate, args.seconds)
            path = args.out / f"{name}_{n}.flac"
            sf.write(path, audio.astype(np.float32), args.rate, subtype="PCM_16", compression_level=1.0)
            total += path.stat().st_size
            print(f"{path.name}  {len(audio) / args.rate:.1f} s  {path.stat().st_size / 1024:.0f} KiB")
    print(f"{2 * len(PIECES)} clips, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
