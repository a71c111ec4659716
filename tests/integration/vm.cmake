# SPDX-License-Identifier: MIT
# Sandboxes booted for real. RUN_SERIAL: each VM is a busy emulator on a 2-core host.
# Specs run under lua5.4 with the built module; a sanitizer build runs them under
# smolvm-lua instead (lua5.4 itself has no ASan runtime to load the module into).
if(SMOLVM_SANITIZE)
  set(SMOLVM_IT_LUA $<TARGET_FILE:smolvm-lua>)
else()
  set(SMOLVM_IT_LUA ${LUA54_BIN})
endif()
add_test(NAME integration/vm
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/vm_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/vm PROPERTIES LABELS "integration;vm" SKIP_RETURN_CODE 77
  RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

add_test(NAME integration/image-boot
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/integration/image-boot.py)
set_tests_properties(integration/image-boot PROPERTIES LABELS "integration;vm"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 300)

add_test(NAME integration/recipes
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/recipes_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/recipes PROPERTIES LABELS "integration;vm" SKIP_RETURN_CODE 77
  RUN_SERIAL ON TIMEOUT 1800
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

# network = "nat" with real guests, inside namespaces the test makes (needs root).
add_test(NAME integration/nat
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/nat-netns.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/nat_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/nat PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 900
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

add_test(NAME integration/cli
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/cli_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/cli PROPERTIES LABELS "integration;vm" SKIP_RETURN_CODE 77
  RUN_SERIAL ON TIMEOUT 600
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

# The guest agent and the supervisor with real guests (docs/supervisor.md).
add_test(NAME integration/agent
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/run-spec.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/agent_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/agent PROPERTIES LABELS "integration;vm" SKIP_RETURN_CODE 77
  RUN_SERIAL ON TIMEOUT 900
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

# Owners SIGKILLed at random moments leave nothing behind (nat too: needs root).
add_test(NAME integration/lifetime
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/nat-netns.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/lifetime_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/lifetime PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

# Templates, clones, fork, pause and suspend (docs/templates.md); nat clones need root.
add_test(NAME integration/templates
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/nat-netns.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/templates_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/templates PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")

# Egress policies, the DNS filter, denied attempts and what fails closed, with real
# guests inside namespaces the test makes (needs root; dnsmasq for its resolver).
add_test(NAME integration/egress
  COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/integration/nat-netns.sh ${SMOLVM_IT_LUA}
          ${CMAKE_CURRENT_SOURCE_DIR}/integration/egress_spec.lua
  WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/integration)
set_tests_properties(integration/egress PROPERTIES LABELS "integration;vm;root"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 1200
  ENVIRONMENT "${SMOLVM_TEST_ENV};LUA_PATH=${CMAKE_SOURCE_DIR}/lua/?.lua\;${CMAKE_SOURCE_DIR}/lua/?/init.lua\;\;;LUA_CPATH=${CMAKE_BINARY_DIR}/lua54/?.so\;\;")
