# SPDX-License-Identifier: MIT
# disk = "shared" with a real guest: the base image (a copy) stays unchanged.
# (vm.cmake's interpreter choice; this file is included before it.)
if(SMOLVM_SANITIZE)
  set(SMOLVM_SHARED_IT_LUA $<TARGET_FILE:smolvm-lua>)
else()
  set(SMOLVM_SHARED_IT_LUA ${LUA54_BIN})
endif()
add_test(NAME integration/shared-disk
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_SHARED_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/shared_disk_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/shared-disk PROPERTIES LABELS "integration;vm"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 600
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")
