"""Copies of a vocabulary (or model) folder whose SentencePiece model a test has edited."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def edited_vocabulary(source: Path, target: Path, edit: Callable[[Any], None]) -> Path:
    """Copy ``source`` to ``target`` and rewrite its ``sentencepiece.model`` after ``edit(proto)``."""
    from sentencepiece import sentencepiece_model_pb2

    shutil.copytree(source, target)
    model_file = target / "sentencepiece.model"
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    edit(proto)
    model_file.write_bytes(proto.SerializeToString())
    return target
