"""Run many mergekit-yaml commands in one mergekit 0.1.5 process (each start costs ~15 s).

    /tmp/mk/bin/python tests/compat/mergekit_driver.py JOBS.json RESULTS.json

JOBS.json: a list of {"name", "args"} (mergekit-yaml's command line). RESULTS.json: name ->
{"accepted": true} or {"accepted": false, "error": "<exception type>: <last line>"}.
Run by make_compat_expected.py; never by pytest.
"""

import json
import sys
import traceback


def main(jobs_path: str, results_path: str) -> None:
    from mergekit.io.tasks import LoaderCache
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    results = {}
    for job in json.load(open(jobs_path)):
        LoaderCache().loaders.clear()  # each job starts as a fresh mergekit-yaml would
        try:
            mergekit_yaml(job["args"], standalone_mode=False)
            results[job["name"]] = {"accepted": True}
        except BaseException as err:  # noqa: BLE001  a refusal of any kind is what we record
            lines = str(err).strip().splitlines() or [""]
            results[job["name"]] = {"accepted": False, "error": f"{type(err).__name__}: {lines[-1][:300]}"}
            traceback.print_exc(limit=2)
        print(job["name"], results[job["name"]], file=sys.stderr, flush=True)
    json.dump(results, open(results_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
