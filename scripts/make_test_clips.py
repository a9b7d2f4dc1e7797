#!/usr/bin/env python3
"""Regenerate the small test footage in ``tests/data/`` from the full clips.

    .venv/bin/python scripts/make_test_clips.py [--src ../shared/data/videos] [--out tests/data]

The full clips (``../shared/data/videos``, CC BY 4.0, see its SOURCES.md) are too big
to commit; the test suite runs on the trimmed copies made here (<= 12 MB in all):

- MP4: re-encoded with PyAV's libx264 (H.264 Constrained Baseline, no B-frames, a
  keyframe every 25 frames, one thread so the output is reproducible), first N frames,
  native size and frame rate, PTS from 0. ``intel_car-detection.mp4`` keeps all 377
  frames with the ``moov`` atom FIRST (a truncated copy still opens, then fails
  mid-decode); ``intel_person-bicycle-car-detection_trimmed.mp4`` keeps ``moov`` LAST
  (a truncated copy cannot even be opened) and an AAC audio stream.
- GIF: the first N frames cut out of the original file block by block (header, global
  palette, the NETSCAPE loop extension, then whole frames): no re-encoding, so every
  kept frame is bit-identical to the original. Short GIFs are copied byte for byte.

It checks the inputs' sha256 against the originals it expects, checks the properties
the tests rely on (truncation behaviour, moov position, frame counts), then writes
``SOURCES.md`` (attribution, what was changed, measured resolution / fps / frames /
sha256) and copies the licence text next to the clips.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "videos"
DEFAULT_OUT = REPO / "tests" / "data"
LICENSE = "LICENSE-CC-BY-4.0.txt"
MAX_TOTAL = 12 * 2**20

ATTRIBUTION = ('"Sample videos from Intel IoT DevKit, https://github.com/intel-iot-devkit/sample-videos, '
               'licensed CC BY 4.0"')
INTEL = ("https://github.com/intel-iot-devkit/sample-videos", "57978890822836f2b4743852f04f62fc511757e4")
X264_GOP = 25


@dataclass(frozen=True)
class Clip:
    name: str
    how: str  # "reencode" | "gif_trim" | "copy"
    origin: str  # where the original comes from (repo, commit, path)
    src_sha256: str  # of the original in --src
    frames: int | None = None  # frames kept (None: all)
    crf: int = 26
    faststart: bool = True  # moov atom first
    audio: bool = False  # keep (re-encode) the audio stream
    truncated: str = ""  # check what its first 35% does: "mid-decode" (opens, then fails) or "at-open"
    note: str = ""  # why this clip is in the tests / what they rely on


def _intel(path: str) -> str:
    return f"{INTEL[0]} (commit `{INTEL[1]}`), `{path}`"


CLIPS = [
    Clip("intel_car-detection.mp4", "reencode", _intel("car-detection.mp4"),
         "d31e0ebf194cc16e50eea784e7c3b0b1bb7976a4fb9b3fec26cb92a6704cca34", frames=None, crf=26, faststart=True, truncated="mid-decode",
         note="all 377 frames at 12.5 fps (frame i at i*0.08 s); served by the test RTSP server (H.264 Baseline)"),
    Clip("intel_one-by-one-person-detection.mp4", "reencode", _intel("one-by-one-person-detection.mp4"),
         "a5964aa259099a482a8b360ffc2c57b5a30f84d5919236a4dad01f8e929ac07c", frames=300, crf=28, faststart=True,
         note="the first 30 s; the kill -9 test plays it several times back to back (a list of files)"),
    Clip("intel_person-bicycle-car-detection_trimmed.mp4", "reencode",
         "https://github.com/shehryarusman/Final_Project (commit `37006e3a24baa2fbc09b668adb3fc1af17d74e46`), "
         "`person-bicycle-car-detection.mp4`: a third party's trimmed re-encode of Intel's "
         "sample-videos/person-bicycle-car-detection.mp4 (modified); credit Intel",
         "ff6419d711e39419b00f40f37bf2ea8310319c567a6394c0b03601ec64340bc2", frames=48, crf=26, faststart=False, audio=True, truncated="at-open",
         note="an audio stream next to the video"),
    Clip("intel_preview_face-demographics-walking.gif", "copy", _intel("preview/face-demographics-walking.gif"),
         "d85689169bdf1735b75c31b5cdf985f25a3fa92a6448e25f529f655002f22b3c",
         note="two people walking towards the camera in every frame"),
    Clip("intel_preview_people-detection.gif", "copy", _intel("preview/people-detection.gif"),
         "fa63d51a370464652cb902f73de8940292c8b4561c595b92fe252ad23be0f1d9"),
    Clip("intel_preview_store-aisle-detection.gif", "gif_trim", _intel("preview/store-aisle-detection.gif"),
         "8f29af471b7df06c4eda38b72c22a86ee4779dfeff91c750b4f8087441ddb4d3", frames=40),
    Clip("intel_preview_worker-zone-detection.gif", "gif_trim", _intel("preview/worker-zone-detection.gif"),
         "258a1df000dfdb488f2992ecc02ed262e7ecf03f638c3f5d1736b26718783447", frames=16),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------- GIF
def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        pos += 1
        if n == 0:
            return pos
        pos += n


def gif_trim(data: bytes, n: int) -> bytes:
    """The first ``n`` frames of a GIF, cut block by block (no re-encoding)."""
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF")
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)  # header, screen descriptor, global palette
    out = bytearray(data[:pos])
    pending = bytearray()  # extensions (loop, graphic control) belonging to the next image
    frames = 0
    while frames < n:
        b = data[pos]
        if b == 0x3B:  # trailer: fewer frames than asked
            raise ValueError(f"GIF has only {frames} frames, {n} asked")
        if b == 0x21:  # extension: introducer, label, sub-blocks
            end = _skip_sub_blocks(data, pos + 2)
            pending += data[pos:end]
        elif b == 0x2C:  # image descriptor [+ local palette] + LZW code size + sub-blocks
            f = data[pos + 9]
            start = pos + 10 + (3 * (2 << (f & 7)) if f & 0x80 else 0)
            end = _skip_sub_blocks(data, start + 1)
            out += pending + data[pos:end]
            pending.clear()
            frames += 1
        else:
            raise ValueError(f"unexpected GIF block {b:#04x} at byte {pos}")
        pos = end
    out += b"\x3b"
    return bytes(out)


# ----------------------------------------------------------------------- MP4
def reencode_mp4(src: Path, dst: Path, clip: Clip) -> None:
    opts = {"movflags": "+faststart"} if clip.faststart else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=opts) as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = vin.width, vin.height, "yuv420p"
        vs.options = {"crf": str(clip.crf), "preset": "slow", "profile": "baseline", "threads": "1",
                      "x264-params": f"keyint={X264_GOP}:min-keyint={X264_GOP}:scenecut=0:bframes=0"}
        ain = inp.streams.audio[0] if clip.audio else None
        aus = None
        if ain is not None:
            aus = out.add_stream("aac", rate=ain.rate, layout=ain.layout.name)
            aus.bit_rate = 64_000
        end_s = clip.frames / float(rate) if clip.frames is not None else float("inf")
        n = 0
        video_done, audio_done = False, ain is None
        for pkt in inp.demux(*(s for s in (vin, ain) if s is not None)):
            if pkt.stream.type == "video" and not video_done:
                for fr in pkt.decode():
                    if clip.frames is not None and n >= clip.frames:
                        video_done = True
                        break
                    f = av.VideoFrame.from_ndarray(fr.to_ndarray(format="yuv420p"), format="yuv420p")
                    f.pts, f.time_base = n, Fraction(1) / rate
                    for p in vs.encode(f):
                        out.mux(p)
                    n += 1
            elif pkt.stream.type == "audio" and not audio_done and aus is not None:
                for af in pkt.decode():
                    if af.time is not None and af.time >= end_s:
                        audio_done = True
                        break
                    af.pts = None  # the encoder numbers the samples from 0
                    for p in aus.encode(af):
                        out.mux(p)
            if video_done and audio_done:
                break
        for p in vs.encode():
            out.mux(p)
        if aus is not None:
            for p in aus.encode():
                out.mux(p)


# -------------------------------------------------------------------- checks
@dataclass
class Props:
    width: int
    height: int
    fps: float
    frames: int
    streams: str


def measure(path: Path) -> Props:
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        pts = [float(f.pts * vs.time_base) for f in c.decode(vs)]
        kinds = ", ".join(f"{s.type} {s.codec_context.name}" for s in c.streams)
        w, h = vs.width, vs.height
    if pts[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(pts)):
        raise SystemExit(f"{path.name}: PTS must start at 0 and strictly increase")
    return Props(w, h, round((len(pts) - 1) / (pts[-1] - pts[0]), 3), len(pts), kinds)  # mean rate of the PTS


def check_truncation(path: Path, fails_at_open: bool) -> str:
    """The behaviour of the first 35% of the file (what tests/conftest.py's fixtures use)."""
    data = path.read_bytes()
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    if (moov < mdat) == fails_at_open:
        raise SystemExit(f"{path.name}: moov atom {'first' if moov < mdat else 'last'}, expected the other way round")
    cut = path.with_suffix(".cut.mp4")
    cut.write_bytes(data[: int(len(data) * 0.35)])
    try:
        try:
            c = av.open(str(cut))
        except av.error.InvalidDataError:
            if fails_at_open:
                return "the first 35% of the file cannot be opened (moov atom last)"
            raise SystemExit(f"{path.name}: a truncated copy should open") from None
        if fails_at_open:
            raise SystemExit(f"{path.name}: a truncated copy should not open")
        with c:
            vs = c.streams.video[0]
            n, failed = 0, False
            try:
                for pkt in c.demux(vs):
                    failed = bool(pkt.size and pkt.is_corrupt)  # the packet cut short by the truncation
                    n += len(pkt.decode())
            except av.error.FFmpegError:
                failed = True
        if not failed:
            raise SystemExit(f"{path.name}: the cut should fall inside a video packet")
        return f"the first 35% of the file opens (moov atom first) and decodes {n} frames before the cut"
    finally:
        cut.unlink()


# ---------------------------------------------------------------------- main
def changed(clip: Clip, props: Props) -> str:
    if clip.how == "copy":
        return "unchanged (byte copy)"
    if clip.how == "gif_trim":
        return (f"trimmed to the first {clip.frames} frames by cutting the GIF after frame {clip.frames} "
                "(header, palette and kept frames copied byte for byte; no re-encoding)")
    kept = f"first {clip.frames} frames" if clip.frames else "all frames"
    audio = "; audio re-encoded AAC-LC 64 kbit/s over the same span" if clip.audio else "; audio stream dropped"
    return (f"{kept}, re-encoded with PyAV/libx264 (H.264 Constrained Baseline, CRF {clip.crf}, preset slow, "
            f"keyframe every {X264_GOP} frames, no B-frames, 4:2:0){audio}; "
            f"moov atom {'first (+faststart)' if clip.faststart else 'last'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the full clips (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the test clips go (default: %(default)s)")
    args = ap.parse_args(argv)
    src, out = args.src, args.out
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for clip in CLIPS:
        s = src / clip.name
        if not s.is_file():
            raise SystemExit(f"missing original: {s}")
        if sha256(s) != clip.src_sha256:
            raise SystemExit(f"{s}: sha256 differs from the original this script was written for")
        d = out / clip.name
        if clip.how == "copy":
            shutil.copyfile(s, d)
        elif clip.how == "gif_trim":
            d.write_bytes(gif_trim(s.read_bytes(), clip.frames or 0))
        else:
            tmp = d.with_suffix(".tmp.mp4")
            reencode_mp4(s, tmp, clip)
            tmp.replace(d)
        p = measure(d)
        if clip.frames is not None and p.frames != clip.frames:
            raise SystemExit(f"{d.name}: {p.frames} frames decoded, {clip.frames} expected")
        trunc = check_truncation(d, fails_at_open=clip.truncated == "at-open") if clip.truncated else ""
        size = d.stat().st_size
        print(f"{d.name}: {p.width}x{p.height}, {p.fps} fps, {p.frames} frames, {size / 2**20:.2f} MiB"
              + (f"; {trunc}" if trunc else ""))
        entries.append((clip, p, size, sha256(d), trunc))
    shutil.copyfile(src / LICENSE, out / LICENSE)
    total = sum(e[2] for e in entries)
    if total > MAX_TOTAL:
        raise SystemExit(f"test clips total {total / 2**20:.2f} MiB > 12 MiB")
    lines = [
        "# Test footage (trimmed copies of real recordings)",
        "",
        f"Attribution (CC BY 4.0): {ATTRIBUTION}. Every file here is a modified copy (trimmed and/or",
        "re-encoded, as listed below) of a clip in `../shared/data/videos/` (see its SOURCES.md);",
        f"licence text: {LICENSE}. Made by `scripts/make_test_clips.py`, which regenerates them",
        "from the originals and rewrote this file with the properties measured on the results.",
        "",
        f"Total: {total / 2**20:.2f} MiB ({total:,} B).",
        "",
    ]
    for clip, p, size, digest, trunc in entries:
        lines += [
            f"## `{clip.name}`",
            "",
            f"- Original: {clip.origin}. Licence CC-BY-4.0; credit: {ATTRIBUTION}.",
            f"- Changes: {changed(clip, p)}.",
            f"- Resolution: {p.width}x{p.height}; fps (mean over the PTS): {p.fps:g}; frames decoded: {p.frames}; streams: {p.streams}",
            f"- Size: {size:,} B; sha256 `{digest}`",
        ]
        if trunc or clip.note:
            lines.append(f"- Tests rely on: {'; '.join(x for x in (clip.note, trunc) if x)}.")
        lines.append("")
    (out / "SOURCES.md").write_text("\n".join(lines))
    print(f"total {total / 2**20:.2f} MiB in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
