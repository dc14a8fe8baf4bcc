# find_package(baton): the imported target baton::core (include/baton.h, libbaton_core.a),
# with its dependencies libuv and libcurl found as the build found them, through pkg-config.
include(CMakeFindDependencyMacro)
find_dependency(PkgConfig)
if(NOT TARGET PkgConfig::UV)
  pkg_check_modules(UV REQUIRED IMPORTED_TARGET libuv)
endif()
if(NOT TARGET PkgConfig::CURL)
  pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
endif()
include("${CMAKE_CURRENT_LIST_DIR}/batonTargets.cmake")
if(TARGET baton::baton_core AND NOT TARGET baton::core)
  add_library(baton::core ALIAS baton::baton_core)
endif()
