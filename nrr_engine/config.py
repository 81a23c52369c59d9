"""The config file (config/nrr.yaml) turned into frozen Settings; paths resolve relative to the file.

Validation collects every problem (for `validate`); `load` raises them all at once as ConfigErrors.
"""
from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import re
import stat
import zoneinfo
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError, ConfigErrors, Location, close_match
from . import yamlsource

ENV_VAR = "NRR_ENGINE_CONFIG"
DEFAULT_PATH = Path("config/nrr.yaml")

DEFAULT_VIEW_FIELDS = {
    "ultimate_parent": "Ultimate_Parent__c",
    "depth": "Hierarchy_Depth__c",
    "arr": "Hierarchy_ARR__c",
    "child_count": "Child_Count__c",
}


# The engine's own fields and object, as salesforce/ ships them (tests/test_validate.py keeps the two in step).
# A local org's CSVs lack them until they are exported with them (a first run, the demo org): the working copy
# gets them as columns, the local equivalent of deploying salesforce/. Any other field the config names must be
# a column of the org's CSV (a rollup target too: add an empty column to declare one).
ENGINE_FIELDS = {"Account": ("Ultimate_Parent__c", "Hierarchy_Depth__c", "Hierarchy_ARR__c", "Child_Count__c",
                             "Family_Key__c")}
ENGINE_OBJECTS = ("KPI_Snapshot__c",)

# An object or field name from config reaches a REST path and SOQL: it must be a Salesforce API name.
API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def project_folder(config_file: Path) -> Path:
    """The folder every path in a config (and its rules' tables) must stay inside: the project folder that holds
    config/ when the file sits in a folder named config (the init/demo layout: <project>/config/nrr.yaml beside
    <project>/rules, <project>/org, <project>/state), else the config file's own folder."""
    folder = config_file.resolve().parent
    return folder.parent if folder.name == "config" else folder


def symlink_out(path: Path, roots) -> tuple[Path, str, Path] | None:
    """The symbolic link inside `roots` through which `path` (taken as written, `..` and all) leaves them: the
    link, its target as the link holds it (readlink: what it points at is never opened) and where it ends up;
    None when no such link is on the way (the path leaves by itself, e.g. ../../etc or /proc/self/environ)."""
    path = Path(path)
    here = Path(path.anchor)
    for part in path.parts[1:] if path.anchor else path.parts:
        here = here / part
        try:
            if not here.is_symlink():
                continue
            target, end, home = os.readlink(here), here.resolve(), here.parent.resolve()
        except (OSError, RuntimeError):   # a loop of links, a folder we may not read: no reason to give
            return None
        if yamlsource.within(home, roots) and not yamlsource.within(end, roots):
            return Path(os.path.normpath(here)), target, end
    return None


def kind_problem(path: Path, want: str) -> str | None:
    """Why `path` cannot be what a setting names, told from stat alone (nothing is opened): `want` "file" (a file the
    engine opens or creates: the ledger, a working copy) or "folder" (one it reads: an org export); None when it
    can be, or does not exist yet (the run creates a file, or says a folder is missing)."""
    try:
        mode = path.stat().st_mode
    except NotADirectoryError:   # a file where a folder on its way should be: name it
        up = next((u for u in path.parents if u.exists()), None)
        return f"cannot be reached: {up} is a file, not a folder" if up is not None else None
    except OSError:   # missing (the run creates it, or says so), or not ours to look at (the run says which)
        return None
    if want == "folder":
        return None if stat.S_ISDIR(mode) else "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder"
    if stat.S_ISREG(mode):
        return None
    return "is a folder, not a file" if stat.S_ISDIR(mode) else "is not a regular file (a FIFO, socket or device)"


def fixed_prefix(pattern: str) -> Path:
    """The part of a glob pattern before its first wildcard (../rules of ../rules/*.yaml; all of a plain path):
    the folder every file it can match lies in."""
    return Path(*itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))


def schema() -> dict:
    """The JSON Schema of the config file."""
    return json.loads(resources.files("nrr_engine").joinpath("schemas/config.schema.json").read_text("utf-8"))


@dataclass(frozen=True)
class SubscriptionSource:
    object: str
    account: str
    start: str
    amount: str
    end: str | None = None
    amount_period: str = "monthly"
    end_exclusive: bool = False
    product: str | None = None
    currency: str | None = None


@dataclass(frozen=True)
class ArrSettings:
    source: str
    account_field: str | None = None
    subscriptions: SubscriptionSource | None = None
    history_months: int = 36


@dataclass(frozen=True)
class View:
    """A lookup view (parent_field) or a partition of another view's families by a field (partition_of, by)."""

    name: str
    parent_field: str | None
    fields: dict[str, str] = field(default_factory=dict)
    partition_of: str | None = None
    by: str | None = None


@dataclass(frozen=True)
class HierarchySettings:
    max_depth: int = 100
    auto_apply: float = 0.95
    child_limit: int = 10_000
    locked_field: str | None = "Hierarchy_Locked__c"
    locked_field_required: bool = False     # named in config: the org must have it
    missing_parents: str = "placeholder"
    placeholder_key_field: str = "Family_Key__c"
    duplicates: bool = True


@dataclass(frozen=True)
class SalesforceSettings:
    """How to reach a Salesforce org; secrets are named by environment variable, never held in config."""

    auth: str                                   # jwt | client_credentials | password | session
    instance_url: str | None = None
    allow_any_host: bool = False                # instance_url may name a non-Salesforce host (a private test endpoint)
    domain: str = "login"
    username: str | None = None
    username_env: str = "SF_USERNAME"
    password_env: str = "SF_PASSWORD"
    security_token_env: str = "SF_SECURITY_TOKEN"
    consumer_key_env: str = "SF_CONSUMER_KEY"
    consumer_secret_env: str = "SF_CONSUMER_SECRET"   # client_credentials
    private_key_file: Path | None = None
    private_key_file_env: str = "SF_PRIVATE_KEY_FILE"
    private_key_file_at: Location | None = field(default=None, compare=False, repr=False)  # its config line
    session_id_env: str = "SF_SESSION_ID"
    api_version: str = "59.0"
    timeout_s: float = 120.0
    api_reserve: int = 5000
    bulk_write_min: int = 2000
    bulk_query_min: int = 10_000
    page_size: int = 100_000
    poll_s: float = 2.0
    job_timeout_s: float = 3600.0
    retries: int = 5
    backoff_s: float = 1.0
    full_read_days: int = 7                     # read every object in full when the last full read is older
    read_overlap_s: float = 300.0               # a read of changes starts this long before the mirror's mark
    full_read: bool = field(default=False, compare=False)   # `run/plan --full-read`; never from the config file

    def secret_vars(self) -> tuple[str, ...]:
        """Environment variables whose values must never reach a log line."""
        return (self.password_env, self.security_token_env, self.consumer_key_env, self.consumer_secret_env,
                self.session_id_env)

    def host_allowed(self, host: str | None) -> bool:
        """Whether a session id may be sent to `host`: a Salesforce host (SALESFORCE_HOSTS), or any with
        allow_any_host."""
        host = (host or "").lower().rstrip(".")
        return self.allow_any_host or any(host.endswith("." + d) for d in SALESFORCE_HOSTS)

    def my_domain(self) -> str | None:
        """The org's My Domain host without .salesforce.com ("acme.my", "acme--uat.sandbox.my"), from instance_url or
        a domain that is not login/test; None when neither names one."""
        if self.instance_url:
            host = (urlsplit(self.instance_url).hostname or "").removesuffix(".salesforce.com")
            if host and host not in ("login", "test"):
                return host
        return self.domain if self.domain not in ("login", "test") else None


# The domains Salesforce serves an org's API from (Salesforce Help: My Domain URL Formats): <instance>.salesforce.com,
# <mydomain>.my.salesforce.com and its partitioned forms (<mydomain>--<sandbox>.sandbox.my.salesforce.com,
# .develop., .scratch., .demo., ...), login/test.salesforce.com, and the older *.force.com hosts.
SALESFORCE_HOSTS = ("salesforce.com", "force.com")


@dataclass(frozen=True)
class FieldRef:
    """A field (or, with `name` None, an object) the config names: where it is written and whether the run writes
    it, so the field can be checked against the org (CSV headers or describe) at its own line."""

    object: str
    name: str | None
    key: str                  # the setting, e.g. views[legal].fields.arr
    location: Location
    write: bool = False       # a rollup target, the placeholder key, the snapshot object


@dataclass(frozen=True)
class Settings:
    """Everything a run needs from config; per-run state lives in RunContext, never here."""

    config_file: Path
    source_kind: str
    org_path: Path | None
    working_copy: Path | None
    state: Path
    currency: str
    timezone: str
    arr: ArrSettings
    views: tuple[View, ...]
    rule_files: tuple[Path, ...]
    schedule: dict[str, str]
    snapshots_enabled: bool = True
    snapshot_object: str = "KPI_Snapshot__c"
    snapshot_prefix: str = "a0K"
    segments: tuple[str, ...] = ()
    hierarchy: HierarchySettings = HierarchySettings()
    salesforce: SalesforceSettings | None = None
    max_shrink: float = 0.2                 # guards.max_shrink: share of accounts or ARR a run may lose
    field_refs: tuple[FieldRef, ...] = field(default=(), compare=False, repr=False)
    roots: tuple[Path, ...] = field(default=(), compare=False, repr=False)   # where paths may point
    # what is not wrong but likely a mistake (a rules glob that matches no file): validate prints each, a run
    # reports each as a config_warning finding
    warnings: tuple[ConfigError, ...] = field(default=(), compare=False, repr=False)

    @property
    def max_depth(self) -> int:
        return self.hierarchy.max_depth

    @property
    def lookup_views(self) -> tuple[View, ...]:
        return tuple(v for v in self.views if v.parent_field)

    def view(self, name: str) -> View:
        for v in self.views:
            if v.name == name:
                return v
        raise ConfigError(f"unknown view {name!r}; configured views: {', '.join(v.name for v in self.views)}",
                          Location(str(self.config_file)))

    def job(self, name: str) -> str:
        """`name` if it is a job of this config (under schedule:, or nightly, the job of a manual run), else an error
        listing the jobs."""
        if name in self.schedule or name == "nightly":
            return name
        jobs = ", ".join(dict.fromkeys(["nightly", *self.schedule]))
        hint = close_match(name, ["nightly", *self.schedule])
        raise ConfigError(f"--job {name}: no such job" + (f"; did you mean {hint}?" if hint else "")
                          + f" (jobs: {jobs}; a scheduled job is one under schedule:)",
                          Location(str(self.config_file)))

    def account_fields_read(self) -> list[str]:
        """Account fields the engine reads (besides Id and Name)."""
        names = {v.parent_field for v in self.lookup_views} | {v.by for v in self.views if v.by}
        if self.arr.source == "account_field" and self.arr.account_field:
            names.add(self.arr.account_field)
        names.update(self.segments)
        for v in self.views:
            names.update(f for f in v.fields.values() if f)
        return sorted(names)


def find(explicit: str | os.PathLike | None) -> Path:
    """--config, else $NRR_ENGINE_CONFIG, else ./config/nrr.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def load(path: Path) -> Settings:
    """Load and validate; raise ConfigErrors listing every problem."""
    settings, errors = check(path)
    if errors:
        raise ConfigErrors(errors)
    assert settings is not None
    return settings


def check(path: Path) -> tuple[Settings | None, list[ConfigError]]:
    """Load and validate, collecting every problem instead of stopping at the first."""
    if not path.exists():
        return None, [ConfigError(
            f"config file not found; pass --config FILE, set ${ENV_VAR}, or run `nrr-engine init` to create one",
            Location(str(path)))]
    try:
        doc = yamlsource.load(path)
    except ConfigError as exc:
        return None, [exc]
    if not isinstance(doc.data, dict):
        return None, [ConfigError("expected a mapping of settings (source:, state:, arr:, ...)", doc.location())]
    problems = yamlsource.schema_problems(doc, schema())
    errors = [p.error for p in problems]
    # the rest is still checked (and rules and org with it) when the bad values can be left out
    data = yamlsource.usable(doc.data, schema(), problems) if problems else doc.data
    if data is None:
        return None, errors
    return _build(doc, data, path, errors), errors


def _build(doc: yamlsource.Document, d: dict, path: Path, errors: list[ConfigError]) -> Settings | None:
    """Settings from schema-valid data `d` (doc.data, or what is left of it without its bad values); None when a
    path leaves the project or a name is not an API name (nothing then reads that path or sends that name)."""
    base = path.resolve().parent
    roots = (project_folder(path), *((base / os.path.expanduser(a)).resolve() for a in d.get("allowed_paths", [])))
    n_errors = len(errors)
    hostile: list[ConfigError] = []

    def outside(p: str, at: tuple, member: Path | None = None) -> ConfigError:
        # `member`: the file of a glob that leaves (the pattern itself may well be inside)
        what = yamlsource.excerpt(p, 200)
        link = symlink_out(member if member is not None else base / os.path.expanduser(p), roots)
        if link is None:
            return ConfigError(f"{yamlsource.dotted(at, d)}: {what} is outside the project folder {roots[0]}; "
                               "expected a path inside it (or list the folder under allowed_paths:)", doc.location(at))
        if member is not None:
            what += f" matches {yamlsource.excerpt(os.path.normpath(member), 200)}, which"
        at_end = "" if Path(link[1]) == link[2] else f", which leads to {yamlsource.excerpt(str(link[2]), 200)}"
        return ConfigError(f"{yamlsource.dotted(at, d)}: {what} is outside the project folder {roots[0]}: "
                           f"{yamlsource.excerpt(str(link[0]), 200)} is a symbolic link to "
                           f"{yamlsource.excerpt(link[1], 200)}{at_end} (not followed, nothing read through it); "
                           "expected a path inside the project: replace the link with what it points at, or list the "
                           "folder it points into under allowed_paths:", doc.location(at))

    def rel(p: str, at: tuple) -> Path:
        # every path the config names stays inside `roots`: an org export elsewhere (/data/exports/...), state in
        # /var/lib/... or a key in /run/secrets is let in by listing its folder under allowed_paths:, so a config
        # edit alone cannot make the engine read /proc/self/environ as a key or write its ledger over ~/.bashrc
        resolved = (base / os.path.expanduser(p)).resolve()
        if not yamlsource.within(resolved, roots):
            hostile.append(outside(p, at))
        return resolved

    src = d["source"]
    state = rel(d["state"], ("state",))
    org_path = rel(src["path"], ("source", "path")) if src.get("path") else None
    working_copy = (rel(src["working_copy"], ("source", "working_copy")) if src.get("working_copy")
                    else state.parent / "local-org.db")
    salesforce = None
    if src["kind"] == "local" and org_path is not None and not org_path.is_dir():
        problem = kind_problem(org_path, "folder") if yamlsource.within(org_path, roots) else None
        errors.append(ConfigError(f"source.path: {org_path} {problem}; expected the folder of <SObject>.csv files "
                                  "(the one that holds Account.csv)" if problem else
                                  f"source.path: folder {org_path} does not exist; expected a folder of <SObject>.csv files",
                                  doc.location(("source", "path"))))
    if src["kind"] == "salesforce":
        known = {f.name for f in dataclasses.fields(SalesforceSettings)} - {"private_key_file_at", "full_read"}
        opts = {k: v for k, v in src.items() if k in known}
        if src.get("private_key_file"):
            opts["private_key_file"] = rel(src["private_key_file"], ("source", "private_key_file"))
            opts["private_key_file_at"] = doc.location(("source", "private_key_file"))
        salesforce = SalesforceSettings(**opts)
        url = urlsplit(salesforce.instance_url or "")
        try:
            port = url.port
        except ValueError:
            port = -1
        if salesforce.instance_url and (not salesforce.host_allowed(url.hostname) or url.username or url.password
                                        or port not in (None, 443)) and not salesforce.allow_any_host:
            # the session id (or the token request) goes to this host: only Salesforce's, unless opted out
            errors.append(ConfigError(f"source.instance_url {salesforce.instance_url!r} is not a Salesforce host; "
                                      "expected https://<mydomain>.my.salesforce.com (a host under "
                                      f"{' or '.join('.' + d for d in SALESFORCE_HOSTS)}, no user or port); "
                                      "for a private test endpoint set source.allow_any_host: true",
                                      doc.location(("source", "instance_url"))))
        if salesforce.auth == "client_credentials" and salesforce.my_domain() is None:
            # the client credentials flow is served on the org's My Domain, not login/test.salesforce.com
            errors.append(ConfigError("source.auth client_credentials needs the org's My Domain: set source.domain: "
                                      "<mydomain>.my (or source.instance_url: https://<mydomain>.my.salesforce.com)",
                                      doc.location(("source", "auth"))))
        working_copy = rel(src["mirror"], ("source", "mirror")) if src.get("mirror") else state.parent / "salesforce-mirror.db"
    # each file the run opens or creates must be able to be one (a folder there was "unable to open database file")
    # (one outside the project is refused as that, and not looked at)
    copy_key = "mirror" if src["kind"] == "salesforce" else "working_copy"
    problem = kind_problem(state, "file") if yamlsource.within(state, roots) else None
    if problem:
        errors.append(ConfigError(f"state: {state} {problem}; expected the SQLite ledger file (e.g. ../state/nrr.db), "
                                  "which the first run creates", doc.location(("state",))))
    elif yamlsource.within(working_copy, roots) and kind_problem(working_copy, "file"):
        named = bool(src.get(copy_key))
        what = (f"source.{copy_key}: {working_copy}" if named else
                f"state: the {'mirror' if copy_key == 'mirror' else 'working copy'} beside it, {working_copy},")
        errors.append(ConfigError(f"{what} {kind_problem(working_copy, 'file')}; expected the SQLite file the run "
                                  f"keeps the {'mirror' if copy_key == 'mirror' else 'working copy'} in, which the "
                                  "first run creates" + ("" if named else f" (or set source.{copy_key}: FILE)"),
                                  doc.location(("source", copy_key) if named else ("state",))))

    tz = d.get("timezone", "UTC")
    tz_ok = True
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz_ok = False
        errors.append(ConfigError(f"timezone: {tz!r} is not an IANA time zone (e.g. UTC, Europe/Paris)",
                                  doc.location(("timezone",))))

    a = d["arr"]
    subs = SubscriptionSource(**a["subscriptions"]) if a.get("subscriptions") else None
    arr = ArrSettings(source=a["source"], account_field=a.get("account_field"), subscriptions=subs,
                      history_months=a.get("history_months", 36))

    views = []
    seen: dict[str, int] = {}
    for i, v in enumerate(d.get("views") or [{"name": "legal", "parent_field": "ParentId"}]):
        if v["name"] in seen:
            errors.append(ConfigError(f"views: view name {v['name']!r} is used twice", doc.location(("views", i, "name"))))
        seen[v["name"]] = i
        fields = dict(DEFAULT_VIEW_FIELDS) if v["name"] == "legal" and "fields" not in v else {}
        fields.update({k: val for k, val in (v.get("fields") or {}).items()})
        views.append(View(v["name"], v.get("parent_field"), {k: val for k, val in fields.items() if val},
                          v.get("partition_of"), v.get("by")))
    names = [v.name for v in views]
    for i, v in enumerate(views):
        if v.partition_of is None:
            continue
        of = next((b for b in views if b.name == v.partition_of), None)
        if of is None or of.parent_field is None or names.index(of.name) > i:
            errors.append(ConfigError(f"views: partition_of {v.partition_of!r} must name a lookup view listed before "
                                      f"{v.name!r} (lookup views: {', '.join(b.name for b in views if b.parent_field)})",
                                      doc.location(("views", i, "partition_of"))))
    targets: dict[str, tuple] = {}
    for i, v in enumerate(views):
        for kind, fname in v.fields.items():
            if fname in targets:
                errors.append(ConfigError(f"views: field {fname} is written by two rollups ({targets[fname][0]} and {v.name}.{kind})",
                                          doc.location(("views", i, "fields", kind))))
            targets[fname] = (f"{v.name}.{kind}",)

    rule_files: list[Path] = []
    warnings: list[ConfigError] = []
    for i, pattern in enumerate(d.get("rules", [])):
        at, magic = ("rules", i), glob.has_magic(pattern)
        matches = sorted(glob.glob(str(base / pattern)))
        found = [Path(m).resolve() for m in matches]
        escaping = [Path(m) for m, r in zip(matches, found) if not yamlsource.within(r, roots)]
        if escaping:   # and no file of it is read; the message names the file that leaves (a symlink: its target)
            hostile.append(outside(pattern, at, escaping[0]))
            continue
        prefix = (base / fixed_prefix(pattern)).resolve()
        if not yamlsource.within(prefix, roots):   # whatever it matches, or would once its folder exists
            hostile.append(outside(pattern, at))
            continue
        key = yamlsource.dotted(at, d)
        if not matches and not magic:
            errors.append(ConfigError(f"rules: file {pattern} does not exist", doc.location(at)))
        elif not magic and Path(matches[0]).is_dir():
            errors.append(ConfigError(f"{key}: {yamlsource.excerpt(pattern, 200)} is a folder; expected a rule file "
                                      f"or a pattern of them (e.g. {yamlsource.excerpt(pattern.rstrip('/') + '/*.yaml', 200)})",
                                      doc.location(at)))
        elif not any(Path(m).suffix.lower() in (".yaml", ".yml") and not Path(m).is_dir() for m in matches):
            # a typo (../rulez/*.yaml, *.yml for .yaml files) would turn repair off without a word
            what = ("matches no file" + ("" if prefix.exists() else f" (the folder {prefix} does not exist)")
                    if not matches else "matches no .yaml or .yml file (rule files are YAML)")
            warnings.append(ConfigError(f"{key}: {yamlsource.excerpt(pattern, 200)} {what}; no rule is read from it, "
                                        "so repair runs without its rules: fix the pattern (e.g. '../rules/*.yaml') "
                                        "or remove it", doc.location(at)))
        folders = [f for f in found if f.is_dir()]   # never a rule file (a run hashes every file it reads)
        for f in folders if magic else ():
            if f.suffix.lower() in (".yaml", ".yml"):
                errors.append(ConfigError(f"{key}: {yamlsource.excerpt(pattern, 200)} matches the folder "
                                          f"{yamlsource.excerpt(str(f), 200)}; expected rule files only: rename or "
                                          "move the folder", doc.location(at)))
        rule_files.extend(f for f in found if f not in folders)

    schedule = dict(d.get("schedule", {}))
    for job, expr in schedule.items():
        problem = cron_problem(expr, tz if tz_ok else "UTC")
        if problem:
            errors.append(ConfigError(f"schedule.{job}: {expr!r} is not a 5-field cron expression ({problem})",
                                      doc.location(("schedule", job))))

    snaps = d.get("snapshots", {})
    hierarchy = _hierarchy(d.get("hierarchy", {}))
    refs = _field_refs(doc, d, views, arr, hierarchy, snaps)
    # each object name once, at the key that names it (arr.subscriptions.object), not again at every field of it
    objects = {r.object: r for r in refs if r.name is None}
    for r in refs:
        objects.setdefault(r.object, r)
    names = [(r.key, obj, r.location) for obj, r in objects.items()]
    names += [(r.key, r.name, r.location) for r in refs if r.name]
    h = d.get("hierarchy", {})
    for key in ("locked_field", "placeholder_key_field"):
        if isinstance(h.get(key), str):
            names.append((f"hierarchy.{key}", h[key], doc.location(("hierarchy", key))))
    for key, name, loc in dict.fromkeys(names):
        if not API_NAME.match(name):
            hostile.append(ConfigError(f"{key}: {yamlsource.excerpt(name)} is not a Salesforce API name; expected "
                                       "letters, digits and _ starting with a letter (e.g. Subscription__c)", loc))
    if hostile:
        errors[n_errors:n_errors] = hostile
        return None
    return Settings(
        config_file=path.resolve(), source_kind=src["kind"], org_path=org_path, working_copy=working_copy,
        state=state, currency=d.get("currency", "USD"), timezone=tz, arr=arr, views=tuple(views),
        rule_files=tuple(rule_files), schedule=schedule,
        snapshots_enabled=snaps.get("enabled", True), snapshot_object=snaps.get("object", "KPI_Snapshot__c"),
        snapshot_prefix=snaps.get("key_prefix", "a0K"),
        segments=tuple(d.get("report", {}).get("segments", [])),
        hierarchy=hierarchy, salesforce=salesforce, field_refs=refs,
        max_shrink=d.get("guards", {}).get("max_shrink", 0.2), roots=roots, warnings=tuple(warnings),
    )


def _field_refs(doc: yamlsource.Document, d: dict, views: list[View], arr: ArrSettings, h: HierarchySettings,
                snaps: dict) -> tuple[FieldRef, ...]:
    """Every field and object the config names, at its line (a default at the line of its section)."""
    refs: list[FieldRef] = []

    def ref(obj: str, name: str | None, key: str, at: tuple, write: bool = False) -> None:
        while at and at not in doc.lines:  # a default: the line of the section that leaves it out
            at = at[:-1]
        refs.append(FieldRef(obj, name, key, doc.location(at), write))

    for i, v in enumerate(views):
        at = ("views", i) if d.get("views") else ("views",)
        if v.parent_field:
            ref("Account", v.parent_field, f"views[{v.name}].parent_field", (*at, "parent_field"))
        if v.by:
            ref("Account", v.by, f"views[{v.name}].by", (*at, "by"))
        for kind, fname in v.fields.items():
            ref("Account", fname, f"views[{v.name}].fields.{kind}", (*at, "fields", kind), write=True)
    if arr.source == "account_field" and arr.account_field:
        ref("Account", arr.account_field, "arr.account_field", ("arr", "account_field"))
    if arr.source == "subscriptions" and arr.subscriptions:
        s = arr.subscriptions
        ref(s.object, None, "arr.subscriptions.object", ("arr", "subscriptions", "object"))
        for key in ("account", "start", "end", "amount", "product", "currency"):
            if getattr(s, key):
                ref(s.object, getattr(s, key), f"arr.subscriptions.{key}", ("arr", "subscriptions", key))
    for j, f in enumerate(d.get("report", {}).get("segments", [])):
        ref("Account", f, "report.segments", ("report", "segments", j))
    if h.locked_field_required and h.locked_field:
        ref("Account", h.locked_field, "hierarchy.locked_field", ("hierarchy", "locked_field"))
    if h.missing_parents == "placeholder" and "placeholder_key_field" in d.get("hierarchy", {}):
        # named in config: the org must have it (the default is optional, as for the run)
        ref("Account", h.placeholder_key_field, "hierarchy.placeholder_key_field",
            ("hierarchy", "placeholder_key_field"), write=True)
    if snaps.get("enabled", True):
        ref(snaps.get("object", "KPI_Snapshot__c"), None, "snapshots.object", ("snapshots", "object"), write=True)
    return tuple(refs)


def _hierarchy(h: dict) -> HierarchySettings:
    default = HierarchySettings()
    return HierarchySettings(
        max_depth=h.get("max_depth", default.max_depth), auto_apply=h.get("auto_apply", default.auto_apply),
        child_limit=h.get("child_limit", default.child_limit),
        locked_field=h.get("locked_field", default.locked_field), locked_field_required="locked_field" in h,
        missing_parents=h.get("missing_parents", default.missing_parents),
        placeholder_key_field=h.get("placeholder_key_field", default.placeholder_key_field),
        duplicates=h.get("duplicates", True))


def cron_problem(expr: str, tz: str) -> str | None:
    """None when `expr` is a valid crontab line, else why not."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expr, timezone=tz)
    except ValueError as exc:
        return str(exc)
    return None
