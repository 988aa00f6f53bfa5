/*
 * A stand-in for Rockchip's librknnrt.so, for builds and tests on machines without an
 * NPU (an x86 host under QEMU). It exports the entry points of the RKNN C API
 * (rknn_api.h, rknn-toolkit2 v2.3.2) so that the image's NPU-runtime step and
 * rknnlite's loader find a real aarch64 shared library, and every call refuses with
 * RKNN_ERR_DEVICE_UNAVAILABLE: there is no NPU behind it. Never ship it to a board.
 *
 * Each entry point takes the API's arguments; they are not read (the AAPCS64 and
 * x86-64 calling conventions let a function ignore its arguments).
 */
#define RKNN_ERR_DEVICE_UNAVAILABLE -3

#define REFUSE(name) int name(void) { return RKNN_ERR_DEVICE_UNAVAILABLE; }

REFUSE(rknn_init)
REFUSE(rknn_dup_context)
REFUSE(rknn_destroy)
REFUSE(rknn_query)
REFUSE(rknn_inputs_set)
REFUSE(rknn_set_batch_core_num)
REFUSE(rknn_set_core_mask)
REFUSE(rknn_run)
REFUSE(rknn_wait)
REFUSE(rknn_outputs_get)
REFUSE(rknn_outputs_release)
REFUSE(rknn_create_mem_from_phys)
REFUSE(rknn_create_mem_from_fd)
REFUSE(rknn_create_mem_from_mb_blk)
REFUSE(rknn_create_mem)
REFUSE(rknn_create_mem2)
REFUSE(rknn_destroy_mem)
REFUSE(rknn_set_weight_mem)
REFUSE(rknn_set_internal_mem)
REFUSE(rknn_set_io_mem)
REFUSE(rknn_set_input_shape)
REFUSE(rknn_set_input_shapes)
REFUSE(rknn_mem_sync)

/* What the stand-in says of itself, for a person reading `strings librknnrt.so`. */
const char rknn_standin_note[] = "aiserving stand-in librknnrt.so: no NPU behind it";
