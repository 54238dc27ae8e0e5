/*
 * A Switchyard plugin in plain C, written against sdk/wit/plugin.wit alone (no SDK, no libc,
 * no generated bindings): it shows that the WIT file is the whole contract.
 *
 * It denies publish and subscribe on topics under "c-denied/" and has no opinion otherwise.
 * The canonical ABI layouts used below follow from the WIT types (wasm32, all offsets in bytes).
 * Built by scripts/build-plugins with clang (--target=wasm32, freestanding) and wasm-tools.
 */
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(name)))

/* A bump allocator for the arguments the host copies in. It restarts once the previous call
 * has returned, so a long-lived instance does not grow. */
extern unsigned char __heap_base;
static uintptr_t heap_top = 0;
static int call_finished = 1;

EXPORT("cabi_realloc")
void *cabi_realloc(void *old, uint32_t old_size, uint32_t align, uint32_t new_size) {
    if (call_finished) {
        heap_top = (uintptr_t)&__heap_base;
        call_finished = 0;
    }
    uintptr_t p = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = p + new_size;
    uintptr_t limit = __builtin_wasm_memory_size(0) * 65536u;
    if (end > limit) {
        if (__builtin_wasm_memory_grow(0, (end - limit + 65535u) / 65536u) == (uintptr_t)-1) {
            __builtin_trap();
        }
    }
    unsigned char *dst = (unsigned char *)p;
    const unsigned char *src = (const unsigned char *)old;
    for (uint32_t i = 0; old && i < old_size && i < new_size; i++) dst[i] = src[i];
    heap_top = end;
    return dst;
}

/* Return areas: results too large for registers are written here and their address returned. */
static uint32_t ret_area[8];

static void *finish(void) {
    call_finished = 1;
    return ret_area;
}

static void clear_ret(void) {
    for (int i = 0; i < 8; i++) ret_area[i] = 0;
}

/* init: func(config: string) -> result<registration, string>
 * result layout: u8 discriminant @0 (0 = ok); registration @4 = { hook-set flags u8 @4,
 * topic-filters list<string> @8 (ptr, len) }. */
EXPORT("init")
void *init(const char *config, uint32_t config_len) {
    (void)config;
    (void)config_len;
    clear_ret();
    unsigned char *r = (unsigned char *)ret_area;
    r[0] = 0;          /* ok */
    r[4] = 1u << 1;    /* hook-set: authorize */
    return finish();   /* topic-filters: empty list (ptr 0, len 0) */
}

/* authenticate: func(req: connect-request) -> auth-result
 * Parameters are passed through memory (more than 16 flat values); result: u8 discriminant
 * @0, 2 = ignore. */
EXPORT("authenticate")
void *authenticate(const void *args) {
    (void)args;
    clear_ret();
    ((unsigned char *)ret_area)[0] = 2; /* ignore */
    return finish();
}

/* authorize: func(client: u64, op: access, topic: string, qos: qos) -> acl-result
 * Five flat parameters: the client handle, access, topic (ptr, len), qos. Result: u8
 * discriminant @0 (0 allow, 1 deny, 2 ignore), deny-reason u8 @1. */
EXPORT("authorize")
void *authorize(uint64_t client, uint32_t op, const char *topic, uint32_t topic_len, uint32_t qos) {
    static const char prefix[] = "c-denied/";
    (void)client;
    (void)op;
    (void)qos;
    int denied = topic_len >= sizeof(prefix) - 1;
    for (uint32_t i = 0; denied && i < sizeof(prefix) - 1; i++) {
        if (topic[i] != prefix[i]) denied = 0;
    }
    clear_ret();
    unsigned char *r = (unsigned char *)ret_area;
    if (denied) {
        r[0] = 1; /* deny */
        r[1] = 0; /* not-authorized */
    } else {
        r[0] = 2; /* ignore */
    }
    return finish();
}

/* on-message-publish: func(client: u64, msg: message) -> message-result; 0 = pass.
 * Arguments in memory (more than 16 flat values): the handle @0, the message @8. */
EXPORT("on-message-publish")
void *on_message_publish(const void *args) {
    (void)args;
    clear_ret();
    return finish();
}

/* on-client-event: func(client: u64, event: string): three flat parameters. */
EXPORT("on-client-event")
void on_client_event(uint64_t client, const char *event, uint32_t event_len) {
    (void)client;
    (void)event;
    (void)event_len;
    call_finished = 1;
}
