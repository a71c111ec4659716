# SPDX-License-Identifier: MIT
# An image built for real from a recipe (root: mmdebstrap --mode=root; the host's
# Debian mirror; the kernel from the build cache). About 1-4 minutes, mostly mmdebstrap.
# (vm.cmake's interpreter choice; this file is included before it.)
if(SMOLVM_SANITIZE)
  set(SMOLVM_IMAGE_IT_LUA $<TARGET_FILE:smolvm-lua>)
else()
  set(SMOLVM_IMAGE_IT_LUA ${LUA54_BIN})
endif()
add_test(NAME integration/image
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/image-test.sh ${SMOLVM_IMAGE_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/image_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/image PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")
