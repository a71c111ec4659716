/* SPDX-License-Identifier: MIT */
/* The backend registry: which ops serve which smolvm_backend. */
#include "vmm/vmm.h"

const smolvm_vmm_ops *smolvm_vmm_ops_for(smolvm_backend backend)
{
    return backend == SMOLVM_BACKEND_FIRECRACKER ? &smolvm_vmm_firecracker : &smolvm_vmm_qemu;
}
