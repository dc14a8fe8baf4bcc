# Turns a Lua source file into a C header holding it as a byte array, so that the module
# carries the file and needs no search path for it.
# usage: cmake -DIN=file.lua -DOUT=file.h -DNAME=identifier -P embed_lua.cmake
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
string(REGEX REPLACE "(('[^']*',){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUT}" "/* generated from ${IN} by scripts/embed_lua.cmake: do not edit */\n"
                    "static const char ${NAME}[] = {\n${bytes}};\n")
