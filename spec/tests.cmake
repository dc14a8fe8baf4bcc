# Registers every suite with ctest: C unit tests of the core (spec/c/test_*.c and
# spec/c/internal/test_*.c), the busted specs (spec/*_spec.lua, each its own ctest test so
# they run in parallel), run on the stock lua5.4 interpreter against the freshly built
# module and executable, and luacheck.
find_program(BUSTED busted REQUIRED)
find_program(LUA54 lua5.4 REQUIRED)

# spec/c/test_*.c see only the public header (include/baton.h, through baton_core), as a C
# host does; spec/c/internal/test_*.c test the core's internal parsers and may include its
# private headers (src/core).
file(GLOB C_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/c/test_*.c)
file(GLOB C_INTERNAL_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/c/internal/test_*.c)
foreach(src ${C_TESTS} ${C_INTERNAL_TESTS})
  get_filename_component(name ${src} NAME_WE)
  get_filename_component(dir ${src} DIRECTORY)
  if(dir STREQUAL "${CMAKE_SOURCE_DIR}/spec/c/internal")
    set(name internal_${name})
  endif()
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/spec/c)
  if(name MATCHES "^internal_")
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src/core)
  endif()
  target_link_libraries(${name} PRIVATE baton_core baton_warnings)
  add_test(NAME c_${name} COMMAND ${name})
  set_tests_properties(c_${name} PROPERTIES TIMEOUT 60)
endforeach()

# The Lua allocator of the executable and the module (src/cli/arena.c) is tested alone, with
# Lua, the way both use it.
target_sources(internal_test_arena PRIVATE ${CMAKE_SOURCE_DIR}/src/cli/arena.c)
target_include_directories(internal_test_arena PRIVATE ${CMAKE_SOURCE_DIR}/src/cli)
target_link_libraries(internal_test_arena PRIVATE PkgConfig::LUA)

set(BATON_TEST_ENV
  "BATON_BUILD=${CMAKE_BINARY_DIR}"
  "BATON_EXE=$<TARGET_FILE:baton>"
  "BATON_SRC=${CMAKE_SOURCE_DIR}"
  "BATON_HISTORY=")
if(BATON_ASAN OR BATON_UBSAN)
  # The stock interpreter is not instrumented: the specs run on an instrumented copy of a
  # minimal interpreter instead (children they start stay uninstrumented).
  add_executable(lua_runner ${CMAKE_SOURCE_DIR}/spec/runner/lua_runner.c)
  target_include_directories(lua_runner PRIVATE ${LUA_INCLUDE_DIRS})
  # libcurl (and OpenSSL under it) loaded at startup, not with the module: their
  # thread-local storage is then static, which LeakSanitizer's thread scan handles (it
  # crashes on glibc 2.36's dynamic TLS of a dlopen'ed library).
  target_link_libraries(lua_runner PRIVATE PkgConfig::LUA PkgConfig::CURL baton_warnings)
  target_link_options(lua_runner PRIVATE "LINKER:--no-as-needed")
  list(APPEND BATON_TEST_ENV "BATON_LUA=$<TARGET_FILE:lua_runner>"
       "BATON_CFLAGS=-fsanitize=address,undefined"
       "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1"
       "LSAN_OPTIONS=suppressions=${CMAKE_SOURCE_DIR}/spec/lsan.supp:print_suppressions=0"
       "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
endif()

# spec/c/host/test_*.c are C hosts that embed Lua and load the built module into Lua states
# of their own, as an application does (several states, the state's extra space).
file(GLOB C_HOST_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/c/host/test_*.c)
foreach(src ${C_HOST_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(host_${name} ${src})
  # libcurl loaded at startup, not with the module (as lua_runner, for LeakSanitizer)
  target_link_libraries(host_${name} PRIVATE PkgConfig::LUA PkgConfig::CURL baton_warnings)
  target_link_options(host_${name} PRIVATE "LINKER:--no-as-needed")
  add_dependencies(host_${name} baton_module)
  add_test(NAME c_host_${name} COMMAND host_${name})
  set_tests_properties(c_host_${name} PROPERTIES ENVIRONMENT "${BATON_TEST_ENV}" TIMEOUT 60)
endforeach()

file(GLOB SPECS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
foreach(spec ${SPECS})
  get_filename_component(name ${spec} NAME_WE)
  add_test(NAME ${name}
           COMMAND ${CMAKE_SOURCE_DIR}/spec/run_busted.sh ${spec}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "${BATON_TEST_ENV}" TIMEOUT 180)
endforeach()

# The official MCP conformance suite's client scenarios (@modelcontextprotocol/conformance
# and a Node 22 from npm, installed on first use into build/mcp-conformance by the script)
# against spec/mcp_conformance/client.lua. Without npm or the registry: skipped, loudly.
add_test(NAME mcp_conformance
         COMMAND ${CMAKE_SOURCE_DIR}/spec/mcp_conformance/run.sh $<TARGET_FILE:baton>
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(mcp_conformance PROPERTIES ENVIRONMENT "${BATON_TEST_ENV}" TIMEOUT 1200
                     SKIP_RETURN_CODE 77)

# luacheck (Debian's lua-check, installed by scripts/deps.sh) over the Lua of the tree, with
# .luacheckrc: any warning fails the suite. Without luacheck the test fails and says so.
find_program(LUACHECK luacheck)
if(LUACHECK)
  add_test(NAME luacheck
           COMMAND ${LUACHECK} --no-color lua spec examples bench
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
else()
  add_test(NAME luacheck
           COMMAND sh -c "echo 'luacheck is missing: install lua-check (bash scripts/deps.sh)' >&2; exit 1")
endif()
set_tests_properties(luacheck PROPERTIES TIMEOUT 120)
