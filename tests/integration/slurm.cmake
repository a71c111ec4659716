# SPDX-License-Identifier: MIT
# smolvm-lua --slurm on a real two-node Slurm cluster that slurm-cluster.sh builds in
# network namespaces and removes (needs root and Debian's slurm-wlm + munge; skipped
# with the reason otherwise). About 5 minutes: a dozen TCG guests in all.
# As in vm.cmake (included after this file): lua5.4, or smolvm-lua in a sanitizer build.
if(SMOLVM_SANITIZE)
  set(SMOLVM_SLURM_LUA $<TARGET_FILE:smolvm-lua>)
else()
  set(SMOLVM_SLURM_LUA ${LUA54_BIN})
endif()
add_test(NAME integration/slurm
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/slurm-cluster.sh ${SMOLVM_SLURM_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/slurm_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/slurm PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")
