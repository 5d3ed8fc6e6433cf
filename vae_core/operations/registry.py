"""Model registry in object storage: immutable versions and a champion pointer moved by compare-and-swap.

Layout (any URI):
    <root>/models/<name>/<version>/model.safetensors   weights (copied from the training checkpoint)
    <root>/models/<name>/<version>/config.json         the VaeflowConfig the model was trained with
    <root>/models/<name>/<version>/meta.json           data shape, epoch, training history
    <root>/models/<name>/<version>/codec.json          the fitted feature codec (older: tabular.json)
    <root>/models/<name>/<version>/metrics.json        the ModelReport (what the gate reads)
    <root>/models/<name>/<version>/report/...          the evaluation report (report.html, ...)
    <root>/models/<name>/<version>/version.json        written last: marks a complete version
    <root>/models/<name>/champion/<seq>.json           the champion series: 0000000000.json, 0000000001.json,
                                                       ... one create-only record per promotion; the
                                                       highest number names the current champion
    <root>/models/<name>/champion-head.json            a hint: the number of the latest record seen by
                                                       the last promotion (see below)

A version directory is a loadable checkpoint (`vae_core.training.checkpoints.load_checkpoint(version.uri)`).
The champion changes only through `promote`, after the gate has passed the candidate against the
champion record that was read; the record is written create-only under the next number, so two
promotions decided against the same champion cannot both land (the loser gets ChampionConflict).
Records are never rewritten or deleted: the series is the promotion history.

Finding the latest record must not cost a listing of the whole series (a record a night for years):
each promotion, after its record landed, writes the head file with that record's number. A reader
reads the head, then the record it names and the numbers after it until one is missing (one probe
in the usual case), so three small reads find the champion at record 1 or 10,000. The head is only a
hint: the create-only records stay the truth, a head left behind by a crash or a slower concurrent
promotion only costs a probe more, and a registry without one (older ones) is listed as before.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

from vae_core.data.objects import atomic_write_json, read_json
from vae_core.data.storage import create_only_write, filesystem, join
from vae_core.errors import ChampionConflict, ModelReportError, RegistryError
from vae_core.training.checkpoints import CONFIG_FILE, META_FILE, MODEL_FILE, MODEL_FILES
from vae_core.training.model_report import METRICS_FILE, ModelReport, load_model_report, save_model_report

MODELS_DIR = "models"
VERSION_FILE = "version.json"
CHAMPION_DIR = "champion"
_RECORD = re.compile(r"(\d{10})\.json")
HEAD_FILE = "champion-head.json"  # the latest record's number, a hint (module docstring)
LEGACY_CHAMPION_FILE = "champion.json"  # the single overwritten pointer of earlier releases
REPORT_DIR, REPORT_HTML = "report", "report.html"


@dataclass
class ModelVersion:
    name: str
    version: str
    uri: str  # the version directory: a loadable checkpoint
    report: ModelReport  # its metrics.json
    record: dict[str, Any]  # the whole version.json

    @property
    def report_uri(self) -> str | None:
        return self.record.get("report_uri")


@dataclass
class GateResult:
    passed: bool
    reason: str
    champion_version: str | None = None  # the champion the candidate was compared with
    champion_report: ModelReport | None = field(default=None, repr=False)


def model_uri(root: str, name: str) -> str:
    return join(root, MODELS_DIR, name)


def version_uri(root: str, name: str, version: str) -> str:
    return join(root, MODELS_DIR, name, version)


def new_version(run_date: date, run_id: str) -> str:
    """A sortable, unique version id: the run date and a short run id, e.g. 20261124-3f2a9c1e."""
    return f"{run_date:%Y%m%d}-{run_id.replace('-', '')[:8]}"


def _copy(src: str, dst: str, storage_options: dict | None) -> None:
    sfs, spath = filesystem(src, storage_options)
    dfs, dpath = filesystem(dst, storage_options)
    data = sfs.cat_file(spath)
    parent = dpath.rsplit("/", 1)[0]
    dfs.makedirs(parent, exist_ok=True)
    dfs.pipe_file(dpath, data)


def _files_under(uri: str, storage_options: dict | None) -> list[str]:
    """Paths relative to `uri` of every file below it."""
    fs, root = filesystem(uri, storage_options)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        raise RegistryError(f"{uri}: does not exist")
    base = root.rstrip("/")
    return sorted(p[len(base) + 1 :] for p in fs.find(root))


def publish_version(
    root: str,
    name: str,
    version: str,
    checkpoint_uri: str,
    report: ModelReport,
    report_uri: str | None = None,
    extra: dict[str, Any] | None = None,
    storage_options: dict | None = None,
) -> ModelVersion:
    """Copy a checkpoint (weights, config, codec, meta) and its report folder into
    `<root>/models/<name>/<version>/`, write `report` as its metrics.json, then version.json as the
    completeness marker.

    Idempotent: publishing the same checkpoint as the same version again returns the existing one
    (a retried task); a different checkpoint under an existing version is an error.
    """
    uri = version_uri(root, name, version)
    existing = read_json(join(uri, VERSION_FILE), storage_options)
    if existing is not None:
        if existing.get("source_checkpoint") != checkpoint_uri:
            raise RegistryError(
                f"{uri}: version {version!r} already holds {existing.get('source_checkpoint')}, "
                f"not {checkpoint_uri}; versions are immutable"
            )
        return read_version(root, name, version, storage_options)
    present = set(_files_under(checkpoint_uri, storage_options))
    for required in (MODEL_FILE, CONFIG_FILE, META_FILE):
        if required not in present:
            raise RegistryError(f"{checkpoint_uri}: incomplete checkpoint, {required} is missing")
    files = [f for f in MODEL_FILES if f in present]
    for f in files:
        _copy(join(checkpoint_uri, f), join(uri, f), storage_options)
    report_files = []
    if report_uri is not None:
        for rel in _files_under(report_uri, storage_options):
            _copy(join(report_uri, rel), join(uri, REPORT_DIR, rel), storage_options)
            report_files.append(f"{REPORT_DIR}/{rel}")
    save_model_report(uri, report, storage_options)
    record = {
        "name": name,
        "version": version,
        "uri": uri,
        "source_checkpoint": checkpoint_uri,
        "files": [*files, METRICS_FILE, *report_files],
        "report_uri": (
            join(uri, REPORT_DIR, REPORT_HTML) if f"{REPORT_DIR}/{REPORT_HTML}" in report_files else None
        ),
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    atomic_write_json(join(uri, VERSION_FILE), record, storage_options)
    return ModelVersion(name, version, uri, report, record)


def read_version(root: str, name: str, version: str, storage_options: dict | None = None) -> ModelVersion:
    """A complete registered version; an unknown or half-written one, or one whose metrics.json does
    not read, is a RegistryError."""
    uri = version_uri(root, name, version)
    record = read_json(join(uri, VERSION_FILE), storage_options)
    if record is None:
        raise RegistryError(f"{uri}: no such model version (or not completely published)")
    try:
        report = load_model_report(uri, storage_options)
    except ModelReportError as e:
        raise RegistryError(str(e)) from e
    return ModelVersion(name, version, uri, report, record)


def list_versions(root: str, name: str, storage_options: dict | None = None) -> list[str]:
    """Complete versions of model `name`, oldest first (version ids sort by date)."""
    fs, path = filesystem(model_uri(root, name), storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    out = []
    for p in fs.ls(path, detail=False):
        version = p.rstrip("/").rsplit("/", 1)[-1]
        if fs.exists(f"{p.rstrip('/')}/{VERSION_FILE}"):
            out.append(version)
    return sorted(out)


# ---- the champion pointer -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionRecord:
    """One promotion: record `seq` of the champion series names the champion from then on."""

    seq: int
    name: str
    version: str
    uri: str  # the version directory
    reason: str  # the gate's verdict, or why it was promoted by hand
    promoted_at: str
    previous: str | None  # the champion it replaced
    night: str | None = None  # the nightly run that promoted it, when one did
    flow_run_id: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> ChampionRecord:
        try:
            d = json.loads(data)
            record = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        except (ValueError, TypeError) as e:
            raise RegistryError(f"{source}: not a champion record ({e})") from e
        if not isinstance(record.seq, int) or source.rsplit("/", 1)[-1] != _record_name(record.seq):
            raise RegistryError(f"{source}: holds record {record.seq}, not the one its name says")
        return record


def champion_uri(root: str, name: str) -> str:
    """The folder of the champion series: one create-only JSON object per promotion."""
    return join(model_uri(root, name), CHAMPION_DIR)


def _record_name(seq: int) -> str:
    return f"{seq:010d}.json"  # zero-padded: names sort like the numbers


def _read_record(root: str, name: str, seq: int, storage_options: dict | None) -> ChampionRecord | None:
    uri = join(champion_uri(root, name), _record_name(seq))
    fs, path = filesystem(uri, storage_options)
    fs.invalidate_cache(path)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return ChampionRecord.from_json(data, uri)


def _head_uri(root: str, name: str) -> str:
    return join(model_uri(root, name), HEAD_FILE)


def _write_head(root: str, name: str, record: ChampionRecord, storage_options: dict | None) -> None:
    atomic_write_json(_head_uri(root, name), {"seq": record.seq, "version": record.version}, storage_options)


def _from_head(root: str, name: str, storage_options: dict | None) -> ChampionRecord | None:
    """The latest record, found from the head and the numbers after it; None without a usable head
    (no head, not a head, or its record missing): the caller lists the series instead."""
    try:
        head = read_json(_head_uri(root, name), storage_options)
    except ValueError:
        return None
    seq = head.get("seq") if isinstance(head, dict) else None
    if not isinstance(seq, int) or seq < 0:
        return None
    record = _read_record(root, name, seq, storage_options)
    while record is not None:
        later = _read_record(root, name, record.seq + 1, storage_options)
        if later is None:
            return record
        record = later
    return None


def _latest_seq(root: str, name: str, storage_options: dict | None) -> int | None:
    fs, path = filesystem(champion_uri(root, name), storage_options)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        entries = []
    seqs = [int(m[1]) for e in entries if (m := _RECORD.fullmatch(e.rstrip("/").rsplit("/", 1)[-1]))]
    if seqs:
        return max(seqs)
    legacy = join(model_uri(root, name), LEGACY_CHAMPION_FILE)
    old = read_json(legacy, storage_options)
    if old is not None:  # a registry written before the champion series: refuse to forget its champion
        raise RegistryError(
            f"{legacy}: a champion pointer in the old layout (version {old.get('version')!r}); carry it "
            f"over with registry.promote(root, {name!r}, {old.get('version')!r}, reason, expected_seq=None)"
        )
    return None


def champion_record(root: str, name: str, storage_options: dict | None = None) -> ChampionRecord | None:
    """The latest record of the champion series (version, uri, seq, ...), or None before the first
    promotion. Its `seq` is what a promotion decided against it passes as `expected_seq`."""
    found = _from_head(root, name, storage_options)
    if found is not None:
        return found
    seq = _latest_seq(root, name, storage_options)
    if seq is None:
        return None
    record = _read_record(root, name, seq, storage_options)
    if record is None:
        raise RegistryError(f"{champion_uri(root, name)}: record {seq} was listed but cannot be read")
    return record


def champion(root: str, name: str, storage_options: dict | None = None) -> ModelVersion | None:
    """The current champion of model `name`, or None before the first promotion."""
    record = champion_record(root, name, storage_options)
    return None if record is None else read_version(root, name, record.version, storage_options)


def promote(
    root: str,
    name: str,
    version: str,
    reason: str,
    expected_seq: int | None,
    storage_options: dict | None = None,
    night: str | None = None,
    flow_run_id: str | None = None,
) -> ChampionRecord:
    """Make a complete version the champion, by compare-and-swap on the champion record that was read.

    `expected_seq` is the `seq` of the champion record the decision was made against (None: there
    was no champion). The new record is written create-only as number expected_seq + 1 (or 0), so
    of several promotions decided against the same record exactly one lands; the others raise
    ChampionConflict naming the champion that moved in between. Promoting the version that record
    already names, or retrying a promotion that landed, writes nothing and returns the record.
    """
    target = read_version(root, name, version, storage_options)  # refuses incomplete versions
    expected = None
    if expected_seq is not None:
        expected = _read_record(root, name, expected_seq, storage_options)
        if expected is None:
            raise RegistryError(
                f"{champion_uri(root, name)}: no champion record {expected_seq} to promote over"
            )
        if expected.version == version:
            return expected
    record = ChampionRecord(
        seq=0 if expected_seq is None else expected_seq + 1,
        name=name,
        version=version,
        uri=target.uri,
        reason=reason,
        promoted_at=datetime.now(UTC).isoformat(),
        previous=expected.version if expected else None,
        night=night,
        flow_run_id=flow_run_id,
    )
    uri = join(champion_uri(root, name), _record_name(record.seq))
    if create_only_write(uri, record.to_json(), storage_options):
        _write_head(root, name, record, storage_options)
        return record
    current = _read_record(root, name, record.seq, storage_options)
    if current is None:
        raise RegistryError(f"{uri}: exists (create-only write refused) but cannot be read")
    if current.version == version:
        _write_head(root, name, current, storage_options)  # the landed try may have died before its head
        return current  # a retried promotion that had landed
    was = f"{expected.version} (record {expected.seq})" if expected else "no champion"
    raise ChampionConflict(
        f"{champion_uri(root, name)}: the champion moved while {version} was being promoted: it was {was} "
        f"when the decision was made, and {current.version} was promoted over it meanwhile (record "
        f"{current.seq}, {current.promoted_at}: {current.reason}); {version} was not promoted",
        version,
        expected,
        current,
    )


def resolve(
    root: str, name: str, version: str | None = None, storage_options: dict | None = None
) -> ModelVersion:
    """The version asked for, else the champion; a RegistryError when there is neither."""
    if version is not None:
        return read_version(root, name, version, storage_options)
    current = champion(root, name, storage_options)
    if current is None:
        raise RegistryError(f"{model_uri(root, name)}: no champion yet; no model has passed the gate")
    return current


# ---- the promotion gate -----------------------------------------------------------------------


def _non_finite(metrics: Any, prefix: str = "") -> list[str]:
    """Dotted paths of NaN/inf numbers anywhere in a metrics tree."""
    if isinstance(metrics, dict):
        return [p for k, v in metrics.items() for p in _non_finite(v, f"{prefix}{k}.")]
    if isinstance(metrics, list | tuple):
        return [p for i, v in enumerate(metrics) for p in _non_finite(v, f"{prefix}{i}.")]
    if isinstance(metrics, float) and not math.isfinite(metrics):
        return [f"{prefix.rstrip('.')}={metrics}"]
    return []


def gate(
    candidate: ModelReport,
    champion_report: ModelReport | None,
    margin: float,
    champion_version: str | None = None,
) -> GateResult:
    """Pass a candidate when its report is finite and its held-out ELBO (nats per row, higher is
    better) is not worse than the champion's by more than `margin` nats.

    `champion_report` None means there is no champion; a champion whose report holds no finite
    held-out ELBO fails the gate (the candidate cannot be compared with it).
    """
    bad = _non_finite(candidate.to_dict())
    value = candidate.heldout_elbo
    if value is None:
        return GateResult(False, "candidate has no held-out ELBO (metrics['test']['elbo'])")
    if bad:
        return GateResult(False, f"candidate metrics are not finite: {', '.join(bad[:5])}")
    if champion_report is None:
        return GateResult(True, f"no champion yet; candidate held-out ELBO {value:.2f} nats is finite")
    best = champion_report.heldout_elbo
    label = f"champion {champion_version}" if champion_version else "champion"
    if best is None or not math.isfinite(best):
        return GateResult(
            False,
            f"{label} has no finite held-out ELBO (metrics['test']['elbo'] is {best!r}), so candidate "
            f"{value:.2f} nats cannot be compared with it",
            champion_version,
            champion_report,
        )
    if value < best - margin:
        return GateResult(
            False,
            f"candidate held-out ELBO {value:.2f} nats is {best - value:.2f} nats worse than {label} "
            f"({best:.2f}); the allowed margin is {margin:g}",
            champion_version,
            champion_report,
        )
    return GateResult(
        True,
        f"candidate held-out ELBO {value:.2f} nats vs {label} {best:.2f}: within the margin {margin:g}",
        champion_version,
        champion_report,
    )


def gate_against(
    candidate: ModelReport,
    champion: ChampionRecord | None,
    margin: float,
    storage_options: dict | None = None,
) -> GateResult:
    """`gate` against the champion record the decision is made on (None: no champion). Its version's
    metrics.json is read strictly: missing or unreadable metrics fail the gate with the reason."""
    if champion is None:
        return gate(candidate, None, margin)
    try:
        report = load_model_report(champion.uri, storage_options)
    except ModelReportError as e:
        return GateResult(
            False,
            f"champion {champion.version} has no readable metrics ({e}), so the candidate cannot be "
            "compared with it",
            champion.version,
        )
    return gate(candidate, report, margin, champion_version=champion.version)
