"""What ``declora survey --combine`` reads of a site's survey.json: counts and text lengths
only, checked against a schema before any of it is used (the file comes from another machine:
it may be damaged, or forged), and the fingerprint of the data and split it was made from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from declora.config import Config, ConfigError

# counts a float64 holds exactly (the survey sums and divides them)
Count = Annotated[StrictInt, Field(ge=0, le=2**53)]


class _Read(BaseModel):
    # the other keys of a survey.json are computed again from these, never read
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class NodePart(_Read):
    node: Count
    counts: dict[str, Count]
    words_mean: Annotated[float, Field(ge=0, strict=True)]
    words_max: Count


class SurveyPart(_Read):
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    network_nodes: Annotated[StrictInt, Field(ge=1)]
    data: str
    partition: str | dict[str, object]
    labels: list[str] = Field(min_length=2)
    validation_rows: Count
    test_rows: Count
    nodes: list[NodePart] = Field(min_length=1)


def fingerprint(cfg: Config) -> str:
    """SHA-256 of what a survey's counts depend on: the nodes, and the data and its split
    (with per-site files, without where each machine keeps its files and how they are
    encoded: those are the site's own)."""
    data = cfg.data.model_dump(mode="json")
    shared = {"nodes": cfg.nodes, "data": data}
    if cfg.data.per_site:
        data.pop("path"), data.pop("encoding")
    else:
        shared.update(seed=cfg.seed, partition=cfg.partition.model_dump(mode="json"))
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()


def read_part(path: str) -> dict:
    """One site's survey.json, checked; a file that is not one is one ConfigError line."""
    where = f"--combine {path}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read ({err.strerror})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a survey.json (JSON nested too deeply)") from None
    except ValueError as err:  # not JSON, not UTF-8, or a number too long to read
        raise ConfigError(f"{where}: not a survey.json ({str(err)[:80]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: not a survey.json (expected a JSON object)")
    try:
        part = SurveyPart.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"{where}: not a survey.json ({loc}: {e['msg']})") from None
    except RecursionError:
        raise ConfigError(f"{where}: not a survey.json (values nested too deeply)") from None
    _check_nodes(part, where)
    return part.model_dump()


def _check_nodes(part: SurveyPart, where: str) -> None:
    """Each node is one of the run's, and counts exactly the survey's labels."""
    for k, n in enumerate(part.nodes):
        if n.node >= part.network_nodes:
            raise ConfigError(
                f"{where}: node {n.node} is not one of the run's {part.network_nodes} nodes"
            )
        if list(n.counts) != part.labels:
            raise ConfigError(
                f"{where}: nodes.{k}.counts names the labels {list(n.counts)}, not {part.labels}"
            )
