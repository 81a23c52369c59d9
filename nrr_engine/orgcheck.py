"""The config and rules checked against the org: every field they name must be one the org has (the local org's
CSV headers, or Salesforce's describe, which also gives its type: one the run accepts), each problem at the YAML
line that names it, with the close match.

`validate` runs it to find what a run would stop on; a run on a local org runs it before it reads anything else,
so a typo in a rollup target is refused instead of becoming a new column.
"""
from __future__ import annotations

from pathlib import Path

from .config import ENGINE_FIELDS, ENGINE_OBJECTS, Settings
from .errors import ConfigError, DataError, Location, NrrError, close_match, disk_full, is_storage_error
from .needs import field_needs  # the run's own list of fields and the types it accepts
from .sources.grants import no_field_fix, no_object_fix


class LocalHeaders:
    """A local org's objects and fields as its <SObject>.csv headers say (first lines only: nothing is loaded)."""

    remote = False

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._headers: dict[str, list[str] | None] = {}
        self.unreadable: set[str] = set()
        self.problems: list[NrrError] = []   # headers that cannot be read (not UTF-8, ';'-separated, no Id)

    def fields(self, obj: str) -> list[str] | None:
        """The object's field names, or None when the folder has no such CSV (or its header cannot be read)."""
        if obj not in self._headers:
            from .sources.local_org import read_header

            path = self.folder / f"{obj}.csv"
            header = None
            if path.exists():
                try:
                    header = read_header(path)
                except DataError as exc:
                    self.problems.append(exc)
                    self.unreadable.add(obj)
                except OSError as exc:
                    self.problems.append(DataError(f"cannot read: {exc.strerror}", Location(str(path))))
                    self.unreadable.add(obj)
            self._headers[obj] = header
        return self._headers[obj]

    def objects(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.csv"))

    def has_records(self, obj: str) -> bool | None:
        """Whether the object's CSV has a record after its header (None: no such file, or it cannot be read)."""
        import csv
        path = self.folder / f"{obj}.csv"
        if self.fields(obj) is None:
            return None
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = csv.reader(fh)
                next(rows, None)
                return any(any(c.strip() for c in row) for row in rows)
        except (OSError, UnicodeDecodeError, csv.Error):
            return None

    def no_object(self, obj: str, fields: tuple[str, ...] = (), own: bool = False) -> str:
        hint = close_match(obj, self.objects())
        return (f"no {obj}.csv in the org folder {self.folder}" + (f"; did you mean {hint}?" if hint else "")
                + f" (its CSVs: {', '.join(self.objects()) or 'none'})")

    def not_a_field(self, obj: str) -> str:
        return f"a column of {obj}.csv"


class DescribedFields:
    """A Salesforce org's objects and fields as describe tells the integration user (one call per object)."""

    remote = True

    def __init__(self, org):
        self.org = org
        self.unreadable: set[str] = set()
        self.problems: list[NrrError] = []

    def fields(self, obj: str) -> list[str] | None:
        d = self.org.describe(obj)
        return None if d is None else [f["name"] for f in d.fields.values()]

    def field_type(self, obj: str, name: str) -> str | None:
        """The field's type as describe gives it (None: no such object or field)."""
        d = self.org.describe(obj)
        f = None if d is None else d.get(name)
        return None if f is None else f["type"]

    def no_object(self, obj: str, fields: tuple[str, ...] = (), own: bool = False) -> str:
        return no_object_fix(obj, fields, own)

    def not_a_field(self, obj: str) -> str:
        return f"a field of {obj} in Salesforce (or field-level security hides it from the integration user)"



def check(settings: Settings, ruleset, org) -> tuple[list[NrrError], list[str]]:
    """(problems, notes): every field and object the config and the rules name that `org` (LocalHeaders or
    DescribedFields) lacks, at its own line; notes for rules that will not be evaluated (when_fields_missing: skip)."""
    problems: list[NrrError] = []
    missing_objects: set[str] = set()
    cache: dict[str, dict[str, str] | None] = {}

    def columns(obj: str) -> dict[str, str] | None:
        if obj not in cache:
            names = org.fields(obj)
            cache[obj] = None if names is None else {n.lower(): n for n in names}
        return cache[obj]

    def has(obj: str, name: str) -> bool:
        cols = columns(obj)
        return cols is not None and name.lower() in cols

    created = not org.remote  # a local working copy gets the engine's own fields and object on the first run
    for ref in settings.field_refs:
        cols = columns(ref.object)
        if cols is None:
            if ref.object in org.unreadable or ref.object in missing_objects:
                continue
            if created and ref.write and ref.object in ENGINE_OBJECTS:
                continue
            missing_objects.add(ref.object)
            named = tuple(r.name for r in settings.field_refs if r.object == ref.object and r.name)
            own = any(r.write for r in settings.field_refs if r.object == ref.object)
            problems.append(ConfigError(f"{ref.key}: {org.no_object(ref.object, named, own)}", ref.location))
            continue
        if ref.name is None or ref.name.lower() in cols:
            continue
        own = ENGINE_FIELDS.get(ref.object, ()) if ref.write else ()
        if created and ref.name in own:
            continue
        hint = close_match(ref.name, [*cols.values(), *(own if created else ())])
        msg = f"{ref.key}: field {ref.name} is not {org.not_a_field(ref.object)}" + (
            f"; did you mean {hint}?" if hint else f" (its fields include: {', '.join(list(cols.values())[:12])})")
        if ref.write and created:
            msg += (f" (the engine writes only to fields the org has: its own, {', '.join(own)}, are added on the "
                    f"first run; any other must be a column of {ref.object}.csv: add an empty column to declare it)")
        elif ref.write:
            msg += " (deploy salesforce/ for the engine's own fields, or fix the field name)"
        elif org.remote:
            msg += f"; {no_field_fix(ref.object, ref.name)}"
        problems.append(ConfigError(msg, ref.location))

    notes = []
    if columns("Account") is not None:
        for rule in ruleset.match:
            rule = rule.for_org(lambda f: has("Account", f))
            missing = [f for f in rule.fields() if not has("Account", f)]
            hints = {f: close_match(f, columns("Account").values()) for f in missing}
            if missing and rule.skip_when_missing:
                notes.append(f"rule {rule.name} ({rule.location.file}:{rule.location.line}) will not be evaluated on "
                             f"this org: Account has no field {', '.join(missing)}" + "".join(
                                 f" (did you mean {h} for {f}?)" for f, h in hints.items() if h)
                             + " (when_fields_missing: skip)")
                continue
            for f in missing:
                loc = rule.field_location(f)
                problems.append(ConfigError(
                    f"field {f} is not {org.not_a_field('Account')}" + (
                        f"; did you mean {hints[f]}?" if hints[f] else
                        f" (its fields include: {', '.join(list(columns('Account').values())[:12])})")
                    + (" " if hints[f] else ". ") + "Fix the rule, or set when_fields_missing: skip to run without it.",
                    Location(loc.file, loc.line, rule=rule.name)))
    if org.remote:
        problems.extend(type_problems(settings, ruleset, org))
    return [*org.problems, *problems], notes


def type_problems(settings: Settings, ruleset, org: DescribedFields) -> list[NrrError]:
    """Fields of a type the run does not accept (it stops on them after describe, exit 2): every one, at the line
    of the setting that names it; a field the org lacks is reported by `check` already."""

    at = {(r.key, (r.name or "").lower()): r.location for r in settings.field_refs}
    problems = []
    for need in field_needs(settings, ruleset):
        kind = org.field_type(need.object, need.field) if need.types else None
        if kind is None or kind in need.types:
            continue
        where = (at.get((need.why, need.field.lower())) or at.get((need.why, ""))
                 or Location(str(settings.config_file), field=need.why))
        problems.append(ConfigError(f"{need.why}: {need.object}.{need.field} is of type {kind}; expected "
                                    f"{' or '.join(need.types)}", where))
    return problems


def local_problems(settings: Settings, ruleset) -> list[NrrError]:
    """The problems `check` finds on the settings' local org (empty for a Salesforce source)."""
    if settings.salesforce is not None or settings.org_path is None:
        return []
    return check(settings, ruleset, LocalHeaders(settings.org_path))[0]


def login_skipped(settings: Settings) -> tuple[str, str] | None:
    """Why `validate` cannot log in to the settings' Salesforce org, found without a network call: (its note, what
    its ok line says) when a credential is not set, None when it can log in. A private key file that is set is
    checked as a run checks it: one that is not a usable key raises its ConfigError (exit 2 at its config line)."""
    from .sources.salesforce import any_credential_set, missing_credential

    s = settings.salesforce
    missing = missing_credential(s, settings.config_file)
    if missing is None:
        return None
    note = (f"org checks skipped: {missing.message}; with the credentials set, validate logs in and checks every "
            "field against describe")
    if not any_credential_set(s):
        return note, "org fields not checked (no Salesforce credentials)"
    return note, "org fields not checked (Salesforce credentials incomplete: see the note above)"


def run_objects(settings: Settings, repair: bool = True) -> list[str]:
    """The objects a run syncs from the org, in its order: accounts, the subscription object when ARR comes from
    it, the snapshot object when the run compares snapshots (`repair`: a plan or run; a report reads none)."""
    objects = ["Account"]
    if settings.arr.subscriptions and settings.arr.source == "subscriptions":
        objects.append(settings.arr.subscriptions.object)
    if repair:
        objects.append(settings.snapshot_object)
    return objects


def record_problems(settings: Settings, objects: list[str]) -> tuple[list[NrrError], dict[str, int]]:
    """Load each object's CSV the way a run does (every record: duplicate or blank Ids, rows of the wrong
    width, values that are not UTF-8, ...) into a throwaway working copy in a private temporary folder, which
    goes afterwards: the state store is not touched. (problems, records loaded per object)."""
    import shutil
    import sqlite3
    import tempfile

    from .sources.local_org import LocalOrg

    problems: list[NrrError] = []
    counts: dict[str, int] = {}
    orgs: dict[str, LocalOrg] = {}
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="nrr-validate-"))   # 0700
        # each file into a copy of its own, so every file's problems are found; a large one loads in a process
        # of its own (as in a run), so the files load beside each other
        failed: dict[str, DataError] = {}
        for obj in objects:
            orgs[obj] = org = LocalOrg(settings.org_path, folder / f"{obj}.db", keep_loaded=False)
            try:
                org.sync([obj], background=[obj] if org.worth_loading_aside(obj) else [])
            except DataError as exc:   # (a small file loads inline: its error comes now)
                failed[obj] = exc
        for obj, org in orgs.items():
            if obj not in failed:
                try:
                    org.finish_sync()
                except DataError as exc:
                    failed[obj] = exc
                else:
                    counts[obj] = org.db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0]
                    continue
            exc = failed[obj]
            path = Path(settings.org_path) / f"{obj}.csv"
            rows = LocalOrg.row_problems(path) if exc.location.file == str(path) else []
            # the load names the first problem; the rows' scan lists the others too (when it finds it)
            problems.extend(rows if any(str(p) == str(exc) for p in rows) else [exc])
    except NrrError as exc:   # the throwaway copy could not be made (a full disk, a file size limit): its exit code
        exc.message += (" (the throwaway copy validate loads the records into, in the temporary folder; or check "
                        "the headers alone: validate --headers-only)")
        problems.append(exc)
    except (OSError, sqlite3.Error) as exc:
        if is_storage_error(exc):   # exit 3, as every command on a full disk
            problems.append(disk_full(exc, [folder or Path(tempfile.gettempdir())],
                                      "the throwaway copy validate loads the CSVs into",
                                      " (or check the headers alone: validate --headers-only)"))
            return problems, counts
        problems.append(DataError(f"the records could not be checked: {exc} (a temporary copy in "
                                  f"{tempfile.gettempdir()} is needed, about the size of the CSVs)",
                                  Location(str(settings.org_path))))
    finally:
        for org in orgs.values():
            try:
                org.close()
            except (OSError, sqlite3.Error, NrrError):
                pass   # (what failed is reported above; the folder goes anyway)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return problems, counts
