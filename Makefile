# Top-level entry points. `make quickstart` and `make test` are the README's two commands.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

# The sanitizer build: clang, ASan + UBSan on library, CLI and tests, plus the libFuzzer targets.
SAN_BUILD ?= build-san

.PHONY: setup build test test-mpi test-all quickstart clean bench
.PHONY: build-sanitize build-fuzz test-sanitize test-sanitize-mpi fuzz fuzz-long

setup:
	BUILD=$(BUILD) bash scripts/setup.sh

build:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The suite CI runs: everything but tests labeled slow. MPI tests (label mpi) run oversubscribed
# under mpirun; `make test-mpi` runs them alone.
test: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

# The micro-benchmarks (build/bench_*; README "Benchmarks"), which `make build` leaves out.
bench: setup build
	cmake --build $(BUILD) --target benches -j $(JOBS)

test-mpi: setup build
	cd $(BUILD) && ctest --output-on-failure -L mpi

test-all: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

build-sanitize:
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	  -DSKYMOE_FUZZ=ON >/dev/null
	cmake --build $(SAN_BUILD) -j $(JOBS)

# The suite under ASan + UBSan: everything `make test` runs except the MPI tests, which take about
# 7 minutes more under the sanitizers (`make test-sanitize-mpi`).
test-sanitize: setup build-sanitize
	cd $(SAN_BUILD) && ctest --output-on-failure -j $(JOBS) -LE "slow|mpi|fuzz"

test-sanitize-mpi: setup build-sanitize
	cd $(SAN_BUILD) && ctest --output-on-failure -L mpi

# Only the fuzz targets and the parsers' unit tests, over the few instrumented files they use
# (fuzz/CMakeLists.txt): minutes, not the whole instrumented engine.
build-fuzz:
	cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	  -DSKYMOE_FUZZ=ON >/dev/null
	cmake --build $(SAN_BUILD) --target fuzz_targets -j $(JOBS)

# Each fuzz target for a few seconds (SKYMOE_FUZZ_SECONDS, default 6) from its seed corpus, and
# the parsers' unit tests under the sanitizers.
fuzz: setup build-fuzz
	cd $(SAN_BUILD) && ctest --output-on-failure -j $(JOBS) -L fuzz

# Each fuzz target in turn for FUZZ_SECONDS (default 1800) or 10^6 executions.
FUZZ_SECONDS ?= 1800
fuzz-long: setup build-fuzz
	FUZZ_BUILD=$(SAN_BUILD) bash scripts/fuzz_long.sh $(FUZZ_SECONDS)

quickstart: setup build
	./$(BUILD)/skymoe quickstart

clean:
	rm -rf $(BUILD) $(SAN_BUILD)
