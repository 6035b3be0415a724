/* eval_http.h - scoring evaluation requests through a running `hstu serve`.
 *
 * An eval_run_fn (eval.h) that sends each batch as one KServe v2 JSON
 * inference request (the tensors of docs/serving.md: USER_IDS,
 * HISTORY_LENGTHS, ITEM_IDS, ACTION_IDS, CONTEXT_IDS, CANDIDATE_LENGTHS,
 * CANDIDATE_IDS with parameters.logits for ranking; TIMESTAMPS, QUERY_TIMES,
 * top_k and exclude_history for retrieval) over one keep-alive connection,
 * and fills the results from SCORES or TOPK_IDS/TOPK_SCORES. So `hstu eval
 * --url` measures the served model with the same metric code as the engine
 * path. JSON numbers carry floats exactly (the server prints 9 digits).
 */
#ifndef HSTU_EVAL_EVAL_HTTP_H
#define HSTU_EVAL_EVAL_HTTP_H

#include "hstu.h"

typedef struct eval_http eval_http;

/* url: "http://host:port" (or "host:port"); model: the name on the server;
 * cfg: the served model's config (borrowed, must outlive h). Connects lazily. */
hstu_status eval_http_create(const char *url, const char *model, const hstu_config *cfg, eval_http **out,
                             hstu_error *err);
void eval_http_destroy(eval_http *h); /* accepts NULL */

/* The eval_run_fn: ctx is an eval_http. Errors: HSTU_ERR_IO when the server
 * cannot be reached or answers non-200 (its message quoted), HSTU_ERR_FORMAT
 * when the reply lacks the expected outputs. */
hstu_status eval_http_run(void *ctx, const hstu_request *reqs, int n, hstu_result *res, bool logits,
                          hstu_error *err);

#endif
