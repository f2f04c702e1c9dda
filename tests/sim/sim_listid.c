/* user/list_id: every membership of an enterprise, a page at a time, behind an opaque
 * cursor.
 *
 * A row is one (member, department) pair, so a member in two departments appears
 * twice. Rows come by member index (the order members were generated or added), then
 * in the order of the member's department list (main department first). The cursor
 * is the position of the next row: a member index and an entry of its department
 * list. Members are never renumbered (a removed one keeps its slot, dead; an added one
 * takes a new index at the end), so a position stays valid whatever mutations happen
 * between pages: members before it were listed, members from it on will be, none
 * twice. Only the one member a page boundary splits can, if it is moved in between,
 * have a department listed twice or not at all.
 *
 * The cursor's text is 20 hex digits: a magic byte (so it never reads as a plain
 * number), the enterprise, the member index and the entry, and a 16-bit check, so a
 * cursor the simulator did not write (or wrote for another enterprise) is refused.
 * Clients must treat it as opaque; tests may decode it with sim_cursor_decode.
 *
 * A page costs O(its rows + the members it skips), and it skips at most
 * SIM_LIST_ID_SCAN members (removed ones, or hidden by a narrow visible range): past
 * that it ends early, with fewer rows than limit and a next_cursor to go on from. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <string.h>

#define CURSOR_BYTES 10
#define CURSOR_MAGIC 0xa5

static const char hexdigits[] = "0123456789abcdef";

/* FNV-1a over the first 8 bytes with a fixed key, folded to 16 bits. */
static uint16_t cursor_check(const unsigned char *b)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ 0x6c6973745f6964ULL; /* "list_id" */
    for (int i = 0; i < 8; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    h ^= h >> 29;
    return (uint16_t)(h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48));
}

static void cursor_bytes(const sim_cursor *cur, unsigned char b[CURSOR_BYTES])
{
    b[0] = CURSOR_MAGIC;
    b[1] = (unsigned char)(cur->corp & 0xff);
    b[2] = (unsigned char)((cur->corp >> 8) & 0xff);
    for (int i = 0; i < 4; i++)
        b[3 + i] = (unsigned char)((cur->user >> (8 * i)) & 0xff);
    b[7] = (unsigned char)cur->slot;
    uint16_t chk = cursor_check(b);
    b[8] = (unsigned char)(chk & 0xff);
    b[9] = (unsigned char)(chk >> 8);
}

void sim_cursor_encode(const sim_cursor *cur, char out[SIM_CURSOR_LEN + 1])
{
    unsigned char b[CURSOR_BYTES];
    cursor_bytes(cur, b);
    for (int i = 0; i < CURSOR_BYTES; i++) {
        out[2 * i] = hexdigits[b[i] >> 4];
        out[2 * i + 1] = hexdigits[b[i] & 15];
    }
    out[SIM_CURSOR_LEN] = '\0';
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

int sim_cursor_decode(const char *s, sim_cursor *cur)
{
    unsigned char b[CURSOR_BYTES];
    if (!s || strlen(s) != SIM_CURSOR_LEN)
        return -EINVAL;
    for (int i = 0; i < CURSOR_BYTES; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        b[i] = (unsigned char)(hi << 4 | lo);
    }
    uint16_t chk = cursor_check(b);
    if (b[0] != CURSOR_MAGIC || b[8] != (chk & 0xff) || b[9] != (chk >> 8) ||
        b[7] > SIM_MAX_USER_DEPTS)
        return -EINVAL;
    cur->corp = (uint32_t)b[1] | (uint32_t)b[2] << 8;
    cur->user = 0;
    for (int i = 0; i < 4; i++)
        cur->user |= (uint32_t)b[3 + i] << (8 * i);
    cur->slot = b[7];
    return 0;
}

/* The start position of a page: "" / NULL is the first row. */
static int page_start(const sim_corp *c, const char *cursor, sim_cursor *pos)
{
    pos->corp = (uint32_t)c->index;
    pos->user = pos->slot = 0;
    if (!cursor || !*cursor)
        return 0;
    if (sim_cursor_decode(cursor, pos) != 0 || pos->corp != (uint32_t)c->index ||
        pos->user > c->nusers)
        return -EINVAL;
    return 0;
}

static void put_row(buf *b, int *n, const sim_user *u, int dept)
{
    buf_printf(b, "%s{\"userid\":", (*n)++ ? "," : "");
    buf_json_str(b, u->userid, strlen(u->userid));
    buf_printf(b, ",\"department\":%d}", dept);
}

int sim_corp_list_id(const sim_corp *c, const char *cursor, uint32_t limit, const sim_deptset *vis,
                     buf *out)
{
    sim_cursor pos;
    char next[SIM_CURSOR_LEN + 1] = "";
    buf rows;
    int n = 0;
    size_t scanned = 0;
    if (page_start(c, cursor, &pos) != 0)
        return -EINVAL;
    buf_init(&rows);
    while (pos.user < c->nusers) {
        const sim_user *u = &c->users[pos.user];
        if ((uint32_t)n == limit || scanned == limit + SIM_LIST_ID_SCAN) {
            sim_cursor_encode(&pos, next);
            break;
        }
        while (u->alive && pos.slot < (uint32_t)u->ndept && (uint32_t)n < limit) {
            int dept = u->dept[pos.slot++];
            if (sim_corp_dept_in(c, vis, dept))
                put_row(&rows, &n, u, dept);
        }
        if (u->alive && pos.slot < (uint32_t)u->ndept)
            continue; /* the page is full inside this member: the cursor points into it */
        pos.user++;
        pos.slot = 0;
        scanned++;
    }
    buf_reset(out);
    buf_printf(out, "{\"errcode\":0,\"errmsg\":\"ok\",\"next_cursor\":\"%s\",\"dept_user\":[",
               next);
    if (rows.len)
        buf_append(out, rows.data, rows.len);
    buf_puts(out, "]}");
    int oom = rows.oom || out->oom;
    buf_free(&rows);
    return oom ? -ENOMEM : 0;
}
