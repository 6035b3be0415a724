/* protocol.h - the HSTU models' tensors in the KServe v2 protocol.
 *
 * Decodes an infer request (JSON, or JSON + binary tensors as Triton's
 * binary data extension) into a job slot, checking every shape, length and
 * id against the model and the slot's limits; encodes the answer. Also the
 * model metadata and the Triton model-config JSON. Statuses are HTTP codes.
 *
 * The infer path allocates nothing: the JSON is parsed in the slot's arena
 * (json_arena.h; a JSON that needs more is a 413) and the reply is written
 * into the slot's scratch, sized at start by proto_scratch_bytes.
 */
#ifndef HSTU_SERVE_PROTOCOL_H
#define HSTU_SERVE_PROTOCOL_H

#include "hstu.h"
#include "serve/batcher.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The tensor interface a request uses: the model's own, or NVIDIA's Triton
 * HSTU example (ranking only; spec/serving.md section 3). */
typedef enum proto_iface { PROTO_NATIVE = 0, PROTO_COMPAT } proto_iface;

#define PROTO_MAX_OUT 4
#define PROTO_ID_MAX 256

/* What the request asked for besides its inputs. */
typedef struct infer_call {
    char id[PROTO_ID_MAX];
    bool has_id;
    int n_out;                  /* outputs to return, in order */
    int out[PROTO_MAX_OUT];     /* index into the model's outputs */
    bool out_binary[PROTO_MAX_OUT];
    int top_k;
} infer_call;

typedef struct proto_limits {
    int max_batch, token_budget, max_top_k;
    int64_t default_timeout_us, max_queue_delay_us;
} proto_limits;

/* body[0, len); header_len < 0 when there is no Inference-Header-Content-
 * Length (all JSON). Returns 200 or an HTTP error status with msg filled. */
int proto_decode_infer(const hstu_engine *e, const hstu_config *cfg, proto_iface iface,
                       const proto_limits *lim, const char *body, size_t len, long long header_len,
                       job *j, infer_call *call, char *msg, size_t msg_size);

/* Writes the response body into j->scratch; returns its length (0 if it
 * does not fit: a sizing bug). *json_len is the JSON part's size when any
 * output is binary (else the whole length). */
size_t proto_encode_infer(const hstu_config *cfg, proto_iface iface, const char *model_name, job *j,
                          const infer_call *call, size_t *json_len);

/* Scratch bytes a job slot needs: the largest of the parse arena for a
 * request of ids_cap ids and the longest reply within lim. */
size_t proto_scratch_bytes(const hstu_config *cfg, const proto_limits *lim, size_t ids_cap);

json_t *proto_model_metadata(const hstu_config *cfg, proto_iface iface, const char *name);
json_t *proto_model_config(const hstu_config *cfg, proto_iface iface, const char *name,
                           const char *backend, const proto_limits *lim, int queue_size);

#endif
