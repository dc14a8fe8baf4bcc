# Thin wrapper over CMake: `make run` and `make test` work on a fresh Debian machine.
BUILD ?= build
JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps build run test lint asan bench fuzz install clean

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

run: build
	./$(BUILD)/baton examples/fanout.lua

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The luacheck part of `make test` alone (.luacheckrc): fails on any warning.
lint: deps
	luacheck --no-color lua spec examples bench

asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DBATON_ASAN=ON -DBATON_UBSAN=ON $(CMAKE_FLAGS)
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)

bench: build
	BATON_BENCH=1 bash scripts/deps.sh
	bash bench/run.sh

# libFuzzer on the parsers of peer input, FUZZ_SECONDS long (clang, ASan+UBSan).
FUZZ_SECONDS ?= 60
fuzz: deps
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DBATON_FUZZ=ON -DBATON_TESTS=OFF \
	  -DBATON_ASAN=ON -DBATON_UBSAN=ON
	cmake --build build-fuzz -j $(JOBS) --target fuzz_parsers
	mkdir -p build-fuzz/corpus
	./build-fuzz/fuzz_parsers -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	  build-fuzz/corpus spec/fuzz/corpus

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) build-asan build-fuzz
