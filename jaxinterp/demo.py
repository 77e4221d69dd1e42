"""`jaxinterp demo --out DIR`: runs each capability on built-in data and writes DIR/index.html.

Each capability adds one section: a function `section(out_dir, *, quick) -> report.Section` named
in SECTIONS. A section that fails is shown as its error in the report (and makes the command exit
non-zero), so one broken capability does not hide the others.

The files a run writes are listed in DIR/demo_manifest.json; a later run into DIR removes those
listed files it does not write again (and only while they hold the bytes the demo wrote), so no
earlier run's figure lies beside the new report. Files the demo did not write are never removed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

from jaxinterp.cliargs import output_folder

# "module:function" of each section, in the order the report shows them.
SECTIONS = [
    "jaxinterp.transformer.demo:section",
    "jaxinterp.toyworld.demo:section",
    "jaxinterp.lens.demo:section",
    "jaxinterp.merge.demo:section",
    "jaxinterp.nugraph.demo:section",
    "jaxinterp.nugraph.demo_events:section",
    "jaxinterp.inject.demo:section",
]


TITLE = "jaxinterp demo"
# The files a run wrote (jaxinterp.manifest), so the next run into the folder removes those it does not
# write again (a quick run's fewer event displays, a section left out by --only): the report embeds
# its images, but PNGs of an earlier run beside it mislead.
MANIFEST = "demo_manifest.json"


def _check_own_index(index: Path) -> None:
    """A ValueError unless `index` is absent or a report an earlier demo wrote (its title): a page the
    user saved in the --out folder (a site's own index.html) was silently replaced by the report."""
    if not index.exists():
        return
    if not index.is_file():
        raise ValueError(f"out_dir: expected a folder where {index.name} can be written, got {index} (not a file)")
    try:
        with open(index, "rb") as f:
            head = f.read(1024).decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"out_dir: {index} exists and cannot be read ({e.strerror}): cannot tell whether an "
                         f"earlier demo wrote it") from None
    if f"<title>{TITLE}</title>" not in head:
        raise ValueError(f"out_dir: expected a new folder or one an earlier `jaxinterp demo` wrote, got {index.parent} "
                         f"holding an {index.name} that is not a demo report (move it, or give another --out)")


def run(out_dir: str | Path, *, quick: bool = False, only: list[str] | None = None) -> tuple[Path, list[str]]:
    """Builds every section and writes out_dir/index.html. Returns the path and the failed sections."""
    from tqdm import tqdm

    from jaxinterp import atomic, benchtools, manifest, report
    from jaxinterp.checks import select_by_parts

    names = select_by_parts(only, SECTIONS, "section")
    out_dir = Path(out_dir)
    _check_own_index(out_dir / "index.html")  # before any section writes its figures
    out_dir.mkdir(parents=True, exist_ok=True)
    tracked = manifest.begin(out_dir, MANIFEST)
    sections, failed = [], []
    for spec in tqdm(names, desc="demo sections", unit="section"):
        module, func = spec.split(":")
        t0 = time.perf_counter()
        try:
            sec = getattr(importlib.import_module(module), func)(out_dir, quick=quick)
            # checked here, inside the try: a title that is not text failed later, in render, after
            # every section had run, and no index.html was written at all
            if not (isinstance(sec, report.Section) and isinstance(sec.title, str) and isinstance(sec.html, str)):
                raise TypeError(f"{spec}: expected a report.Section(title: str, html: str), got {sec!r:.200}")
            sections.append(sec._replace(html=sec.html + f"<p><small>{time.perf_counter() - t0:.1f} s</small></p>"))
        except Exception as e:  # noqa: BLE001 -- shown in the report, counted in the exit code
            failed.append(spec)
            sections.append(report.Section(spec, f"<div class='err'>{report.html.escape(traceback.format_exc())}</div>"))
            # the reason on the terminal too, as it happens (it was only in index.html)
            why = "".join(traceback.format_exception_only(e)).strip().splitlines()[-1]
            tqdm.write(f"section failed: {spec}: {why} (traceback in {out_dir / 'index.html'})", file=sys.stderr)
    index = out_dir / "index.html"
    atomic.write_text(index, report.render(TITLE, sections, footer=f"Run on {benchtools.machine_line()}"))
    removed = manifest.finish(tracked)
    if removed:
        tqdm.write(f"removed {len(removed)} file(s) an earlier demo wrote into {out_dir} and this run did not: "
                   f"{', '.join(removed)}", file=sys.stderr)
    return index, failed


def _command(args) -> int:
    index, failed = run(args.out, quick=args.quick, only=args.only)
    print(f"wrote {index}")
    for f in failed:
        print(f"section failed: {f}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run every capability on built-in data; write DIR/index.html")
    p.add_argument("--out", default="demo_out", type=output_folder, help="output folder (default demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller runs")
    # nargs "+": `--only` with no name (an empty shell variable) is refused, not a run of every section
    p.add_argument("--only", nargs="+", help="only the sections whose name contains one of these")
    p.set_defaults(func=_command)
