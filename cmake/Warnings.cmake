# Warnings and sanitizers for every target of the project.
add_compile_options(-Wall -Wextra)
if(CUDAPOOL_WERROR)
  add_compile_options(-Werror)
endif()

if(CUDAPOOL_SANITIZE)
  string(REPLACE ";" "," _sanitizers "${CUDAPOOL_SANITIZE}")
  add_compile_options(-fsanitize=${_sanitizers} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_sanitizers})
endif()
if(CUDAPOOL_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # Sanitizer instrumentation makes GCC's flow analysis report uninitialised reads inside the
  # standard library (std::regex, std::function); the plain tree keeps the warning.
  add_compile_options(-Wno-maybe-uninitialized)
endif()
