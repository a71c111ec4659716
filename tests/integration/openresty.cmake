# SPDX-License-Identifier: MIT
# The OpenResty example services in a real nginx (Debian's nginx + libnginx-mod-http-lua)
# on 127.0.0.1: they boot sandboxes, so RUN_SERIAL like the other VM tests. Each skips
# (77) without nginx, its lua module, lua-cjson, the LuaJIT build of smolvm or a usable
# host.
#   integration/openresty          examples/openresty: cosockets, streaming, no pool
#   integration/openresty-threads  examples/openresty-threads: smolvm.worker in a pool
add_test(NAME integration/openresty
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/integration/openresty_test.py)
set_tests_properties(integration/openresty PROPERTIES LABELS "integration;vm"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1500
  ENVIRONMENT "${SMOLVM_TEST_ENV}")
add_test(NAME integration/openresty-threads
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/integration/openresty_threads_test.py)
set_tests_properties(integration/openresty-threads PROPERTIES LABELS "integration;vm"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 600
  ENVIRONMENT "${SMOLVM_TEST_ENV}")
