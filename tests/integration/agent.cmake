# SPDX-License-Identifier: MIT
# The guest agent in a real guest under plain QEMU (image from $SMOLVM_TEST_IMAGE, default
# "default"): RUN_SERIAL like the other VM tests. Skips (77) without the image or QEMU.
add_test(NAME integration/agent-guest
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/integration/agent_test.py)
set_tests_properties(integration/agent-guest PROPERTIES LABELS "integration;vm"
  SKIP_RETURN_CODE 77 RUN_SERIAL ON TIMEOUT 600)
