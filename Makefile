# Top-level entry points. `make quickstart` and `make test` are the README's two commands.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

.PHONY: setup build test test-mpi test-all quickstart clean bench

setup:
	BUILD=$(BUILD) bash scripts/setup.sh

build:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The suite CI runs: everything but tests labeled slow. MPI tests (label mpi) run oversubscribed
# under mpirun; `make test-mpi` runs them alone.
test: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

test-mpi: setup build
	cd $(BUILD) && ctest --output-on-failure -L mpi

test-all: setup build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

quickstart: setup build
	./$(BUILD)/skymoe quickstart

clean:
	rm -rf $(BUILD)
