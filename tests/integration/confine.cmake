# SPDX-License-Identifier: MIT
# The confined VMM with real guests (docs/security.md): uid, chroot, capabilities,
# cgroups of QEMU and its supervisor, leftovers after delete and after a SIGKILLed
# supervisor, TCG honesty, rootless use. Needs root for the confinement itself.
# (included before vm.cmake, which sets the same)
if(SMOLVM_SANITIZE)
  set(SMOLVM_IT_LUA $<TARGET_FILE:smolvm-lua>)
else()
  set(SMOLVM_IT_LUA ${LUA54_BIN})
endif()
add_test(NAME integration/confine
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/confine_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/confine PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 900
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")
