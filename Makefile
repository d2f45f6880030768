# The project's two commands (see README): `make run` and `make test`.
# Both create the virtualenv at .venv on first use and reuse it afterwards.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Each setup step is one line with the time it took; its output goes to $(LOG), shown when it fails.
LOG   := $(VENV)/setup.log
STEP  := @sh scripts/setup_step.sh $(LOG)

.PHONY: venv run test bench browser postgres paper paper-finetune

$(STAMP): pyproject.toml requirements.txt
	@mkdir -p $(VENV) && : > $(LOG)
	@test -x $(PY) || sh scripts/setup_step.sh $(LOG) "creating the virtualenv $(VENV)" python3 -m venv $(VENV)
	$(STEP) "upgrading pip" $(PY) -m pip install -q --upgrade pip
	@# torch/torchvision pinned first in requirements.txt: pip takes them from this machine's disk (DESIGN.md)
	$(STEP) "installing requirements.txt (torch, Ray, Optuna, MLflow...; minutes the first time)" \
	  $(PY) -m pip install -q -r requirements.txt
	$(STEP) "installing this checkout (editable)" $(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dals sweep run quick

# The browser test drives Debian's chromium; install it where we can (as root, from apt), else it skips.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && mkdir -p $(VENV) && sh scripts/setup_step.sh $(LOG) "installing chromium for the browser test (apt)" \
	      sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver' \
	    || echo "chromium not installed: the browser test will skip"; }

# The local cluster tests run PostgreSQL's server binaries (initdb, postgres): from apt as root (no
# cluster created, nothing started), else they skip with one line.
postgres:
	@[ -n "$$DALS_PG_BIN" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && mkdir -p $(VENV) && sh scripts/setup_step.sh $(LOG) "installing PostgreSQL's server binaries for the local cluster tests (apt)" \
	      sh -c 'mkdir -p /etc/postgresql-common/createcluster.d && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/dals.conf && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql' \
	    || echo "PostgreSQL not installed: the local cluster tests will skip"; }

test: $(STAMP) browser postgres
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/optimizer_step.py

# The paper reproduction at CPU scale (docs/results.md): the CIFAR-10 stand-in, the sweep (resumes when
# run again), its report into docs/results/paper-cpu, and the paper comparison tables.
paper: $(STAMP)
	$(PY) scripts/make_cifar_standin.py .cache/cifar10-standin --per-batch 400
	DALS_OFFLINE=1 $(VENV)/bin/dals sweep run paper-cpu
	$(VENV)/bin/dals report paper-cpu --out docs/results/paper-cpu
	$(PY) -m sweeps.report.paper paper-cpu --out docs/results/paper-cpu

# The fine-tuning budget where MiniLM learns on 2 cores (docs/results.md; hours; resumes when run again):
# paper-finetune-cpu and dals@finetune-long on its budgets, reported together.
paper-finetune: $(STAMP)
	$(VENV)/bin/dals sweep run paper-finetune-cpu
	$(VENV)/bin/dals sweep run paper-finetune-cpu-long
	$(VENV)/bin/dals report paper-finetune-cpu --out docs/results/paper-finetune-cpu
	$(PY) -m sweeps.report.paper paper-finetune-cpu paper-finetune-cpu-long --out docs/results/paper-finetune-cpu
