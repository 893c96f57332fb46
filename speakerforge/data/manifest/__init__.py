"""Manifests: one `Utterance` record read from 3D-Speaker CSV, Kaldi data dirs and JSON Lines, and written back.

Formats (autodetected by `read_manifest`):

- a directory: Kaldi data dir with `wav.scp` (`key path`), `utt2spk` (`key spk`) and optional `segments`
  (`seg rec start end`, seconds, `end` -1 = to the end of the file). Pipe commands (`... |`) are refused, never run.
- `.csv`: 3D-Speaker, header `ID,dur,path,start,stop,spk`. As written by 3D-Speaker's `prepare_data_csv.py`,
  `start`/`stop` are seconds and `dur` is the duration of the whole file, so a row's segment length is
  `stop - start`; empty `start`/`stop` mean the whole file.
- `.jsonl` / `.json`: one object per line, `{"key", "wav", "spk"}` with optional `start`, `end`, `dur` (seconds).

Relative audio paths resolve against the manifest's folder (the data dir itself for Kaldi).
Every malformed row is reported as `file:line: what`; `read_manifest` raises at the first one unless given a
`problems` list to collect them into (what `validate` does).

The package's modules: `rows` (`Utterance`, what the formats share), `readers` and `writers`.
"""

from speakerforge.data.manifest.readers import manifest_format, read_manifest
from speakerforge.data.manifest.rows import Utterance, duplicate_problems
from speakerforge.data.manifest.writers import write_manifest

__all__ = ["Utterance", "duplicate_problems", "manifest_format", "read_manifest", "write_manifest"]
