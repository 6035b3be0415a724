/* attention_ref.c - the reference HSTU attention: plain loops, fp32.
 *
 * The oracle for every other backend: one (row, column) pair at a time,
 * straight from the contract in attention.h. Slow on purpose.
 */
#include "kernels/attention.h"

#include <math.h>
#include <string.h>

int attn_time_bucket(int64_t dt, int n_buckets)
{
    /* |dt| computed in unsigned arithmetic so INT64_MIN cannot overflow. */
    uint64_t a = dt < 0 ? (uint64_t)0 - (uint64_t)dt : (uint64_t)dt;
    double t = a < 1 ? 1.0 : (double)a;
    double b = floor(log(t) / 0.301);
    if (b < 0)
        b = 0;
    if (b > n_buckets)
        b = n_buckets;
    return (int)b;
}

/* K or V row j (absolute) of head h for sequence s. */
static const float *kv_row(const attn_params *p, const attn_seq *s, int j, int h, int is_v)
{
    int width = is_v ? p->H * p->Dv : p->H * p->Dqk;
    int hd = is_v ? p->Dv : p->Dqk;
    if (j < s->paged) {
        const float *page = s->pages[j / p->page_size];
        size_t off = is_v ? p->v_off : p->k_off;
        return page + off + (size_t)(j % p->page_size) * width + (size_t)h * hd;
    }
    const float *base = is_v ? p->v : p->k;
    return base + (size_t)(s->q0 + (j - s->c)) * p->ld_qkv + (size_t)h * hd;
}

static float rab_value(const attn_params *p, const attn_seq *s, int i, int j)
{
    if (!p->rab)
        return 0.0f;
    int N = p->N;
    int rel = j - i;
    if (rel < -(N - 1))
        rel = -(N - 1);
    if (rel > N - 1)
        rel = N - 1;
    int64_t next = i < s->hist - 1 ? s->ts[i + 1] : s->ts_q;
    int64_t tj = j < s->hist ? s->ts[j] : s->ts_q; /* a candidate's own column */
    int64_t dt = next - tj;
    return p->rab->pos_w[N - 1 + rel] + p->rab->ts_w[attn_time_bucket(dt, p->rab->n_buckets)];
}

static float pair_weight(const attn_params *p, const float *q, const float *k, float rab)
{
    float dot = 0.0f;
    for (int d = 0; d < p->Dqk; d++)
        dot += q[d] * k[d];
    float x = p->alpha * dot + rab;
    return x / (1.0f + expf(-x)) / (float)p->N;
}

void attn_fwd_ref(const attn_params *p)
{
    for (int b = 0; b < p->B; b++) {
        const attn_seq *s = &p->seqs[b];
        int rows = (s->hist - s->c) + s->cand;
        for (int r = 0; r < rows; r++) {
            int dense = s->q0 + r;
            int is_cand = r >= s->hist - s->c;
            int i = is_cand ? s->hist : s->c + r; /* absolute row (candidates: position h) */
            for (int h = 0; h < p->H; h++) {
                const float *q = p->q + (size_t)dense * p->ld_qkv + (size_t)h * p->Dqk;
                float *o = p->out + (size_t)dense * p->ld_out + (size_t)h * p->Dv;
                memset(o, 0, sizeof(float) * p->Dv);
                int last = is_cand ? s->hist - 1 : i;
                for (int j = 0; j <= last; j++) {
                    float w = pair_weight(p, q, kv_row(p, s, j, h, 0), rab_value(p, s, i, j));
                    const float *v = kv_row(p, s, j, h, 1);
                    for (int d = 0; d < p->Dv; d++)
                        o[d] += w * v[d];
                }
                if (is_cand) { /* the candidate's own column */
                    const float *k = p->k + (size_t)dense * p->ld_qkv + (size_t)h * p->Dqk;
                    const float *v = p->v + (size_t)dense * p->ld_qkv + (size_t)h * p->Dv;
                    float w = pair_weight(p, q, k, rab_value(p, s, i, i));
                    for (int d = 0; d < p->Dv; d++)
                        o[d] += w * v[d];
                }
            }
        }
    }
}
