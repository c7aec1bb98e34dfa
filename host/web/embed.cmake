# Writes a C source holding a file's bytes, so the library carries it (the
# web page) without Python or xxd. Run by the build (host/CMakeLists.txt):
#   cmake -DINPUT=index.html -DOUTPUT=page.c -DSYMBOL=lh__page_html -P embed.cmake
# OUTPUT defines `const unsigned char SYMBOL[]` (the bytes and a NUL after
# them) and `const size_t SYMBOL_len` (the byte count, the NUL not counted).
foreach(var INPUT OUTPUT SYMBOL)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "embed.cmake: -D${var}=... is required")
  endif()
endforeach()
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" n_hex)
math(EXPR n "${n_hex} / 2")
# 16 bytes a line: "0xNN," each
string(REPEAT "[0-9a-f][0-9a-f]" 16 line_re)
string(REGEX REPLACE "(${line_re})" "\\1\n" hex "${hex}")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
get_filename_component(name "${INPUT}" NAME)
file(WRITE "${OUTPUT}"
  "/* Generated from ${name} by host/web/embed.cmake: do not edit. */\n"
  "#include <stddef.h>\n\n"
  "const unsigned char ${SYMBOL}[] = {\n${hex}0x00};\n"
  "const size_t ${SYMBOL}_len = ${n};\n")
