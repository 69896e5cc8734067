package io.paystream.kstreams;

import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * paystream's ledger rules for the commands the bench sends (pipelines/ledger/domain.py):
 * OPEN_ACCOUNT, DEPOSIT and TRANSFER on the commands topic, CREDIT and REFUND legs on the
 * legs topic, one store for both. Every command id is remembered per account (a repeat
 * gets COMMAND_DUPLICATE, or ID_REUSED_WITH_DIFFERENT_FIELDS), a credit leg's payment
 * record is its dedupe marker, and events carry the same fields, postings, per-account
 * sequence and uuid5 ids as paystream's, so `paystream verify`'s replay checks apply.
 * Other command types are rejected with NOT_ALLOWED.
 *
 * <p>State keys are "account \u0000 entry" with entries as in domain.py: "a" (the account,
 * with its last sequence number), "q" (the sequence of a key that is not an account),
 * "c:id" (command memo) and "p:id" (payment credited to or refused by the account).
 */
final class LedgerProcessor implements Processor<String, byte[], String, byte[]> {
    static final String STORE = "ledger";
    static final String EVENTS_SINK = "events";
    static final String LEGS_SINK = "legs-out";

    static final UUID NAMESPACE = UUID.fromString("7b3c3a4e-9f0e-4d83-9a43-0c7f5c1d2b6e");
    static final long MAX_AMOUNT = 1_000_000_000_000_000L;
    private static final Pattern CURRENCY = Pattern.compile(
            "AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|IDR|ILS|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD"
            + "|OMR|PLN|SEK|SGD|THB|TND|TRY|USD|VND|ZAR");
    private static final char SEP = '\u001f';
    private static final Map<String, String> TRANSIT = new ConcurrentHashMap<>();
    private static final Map<String, String> SETTLEMENT = new ConcurrentHashMap<>();

    private final Codec codec;
    private final String commandsTopic;
    private final Schema postingSchema;
    private final Schema accountInfoSchema;
    private ProcessorContext<String, byte[]> ctx;
    private KeyValueStore<String, byte[]> store;

    // one application of one input to one account key (domain.py's _Ctx)
    private String key;
    private long now;
    private Account account;
    private boolean dirty;

    LedgerProcessor(Codec shared, String commandsTopic) {
        this.codec = shared.copy();
        this.commandsTopic = commandsTopic;
        this.postingSchema = codec.event.getField("postings").schema().getElementType();
        this.accountInfoSchema = codec.event.getField("account").schema().getTypes().get(1);
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.ctx = context;
        this.store = context.getStateStore(STORE);
    }

    @Override
    public void process(Record<String, byte[]> r) {
        String topic = ctx.recordMetadata().map(m -> m.topic()).orElse("");
        if (topic.equals(commandsTopic)) {
            GenericRecord cmd = codec.decodeCommand(r.value());
            String accountId = cmd.get("account_id").toString();
            if (!accountId.equals(r.key())) {
                // paystream dead-letters this (command_problem); the bench never sends one
                System.err.println("skipping command " + cmd.get("command_id") + ": key differs from account_id");
                return;
            }
            begin(accountId);
            applyCommand(cmd);
        } else {
            GenericRecord leg = codec.decodeLeg(r.value());
            begin(leg.get("account_id").toString());
            applyLeg(leg);
        }
        if (dirty) {
            store.put(sk("a"), account.encode());
        }
    }

    private void begin(String accountKey) {
        key = accountKey;
        now = System.currentTimeMillis();
        byte[] a = store.get(sk("a"));
        account = a == null ? null : Account.decode(a);
        dirty = false;
    }

    private String sk(String entry) {
        return key + '\u0000' + entry;
    }

    // ------------------------------------------------------------------ commands

    private void applyCommand(GenericRecord cmd) {
        String commandId = cmd.get("command_id").toString();
        String type = cmd.get("type").toString();
        String fp = fingerprint(cmd);
        byte[] seen = store.get(sk("c:" + commandId));
        if (seen != null) {
            String[] s = split(seen);  // fp, status, reason
            boolean same = s[0].equals(fp);
            event(same ? "COMMAND_DUPLICATE" : "COMMAND_REJECTED", commandId, commandId, type,
                    same ? s[1] : "REJECTED", true, true,
                    same ? (s[2].isEmpty() ? null : s[2]) : "ID_REUSED_WITH_DIFFERENT_FIELDS",
                    cmd.get("requested_by").toString(), null, null, null, null, null,
                    same ? "duplicate of an earlier command; this repeats its result" : null, null);
            return;
        }
        switch (type) {
            case "OPEN_ACCOUNT" -> openAccount(cmd, fp);
            case "DEPOSIT" -> deposit(cmd, fp);
            case "TRANSFER" -> transfer(cmd, fp);
            default -> reject(cmd, "NOT_ALLOWED", fp);
        }
    }

    private void remember(String commandId, String fp, String status, String reason) {
        store.put(sk("c:" + commandId), join(fp, status, reason == null ? "" : reason));
    }

    private void reject(GenericRecord cmd, String reason, String fp) {
        String commandId = cmd.get("command_id").toString();
        remember(commandId, fp, "REJECTED", reason);
        GenericRecord mv = (GenericRecord) cmd.get("movement");
        event("COMMAND_REJECTED", commandId, commandId, cmd.get("type").toString(), "REJECTED", true, false,
                reason, cmd.get("requested_by").toString(),
                mv == null ? null : str(mv.get("counterparty_id")),
                mv == null ? null : (Long) mv.get("amount"),
                mv == null ? null : mv.get("currency").toString(), null, null, null, null);
    }

    private void openAccount(GenericRecord cmd, String fp) {
        GenericRecord oa = (GenericRecord) cmd.get("open_account");
        if (oa == null || oa.get("kind").toString().equals("TRANSIT")) {
            reject(cmd, "NOT_ALLOWED", fp);
            return;
        }
        String cur = oa.get("currency").toString();
        if (!CURRENCY.matcher(cur).matches()) {
            reject(cmd, "UNKNOWN_CURRENCY", fp);
            return;
        }
        if (account != null) {
            reject(cmd, "ALREADY_EXISTS", fp);
            return;
        }
        byte[] q = store.get(sk("q"));
        account = new Account(cur, oa.get("kind").toString(), "ACTIVE", 0,
                oa.get("external_number").toString(), oa.get("owner_id").toString(),
                q == null ? 0 : Long.parseLong(new String(q, StandardCharsets.UTF_8)));
        dirty = true;
        String commandId = cmd.get("command_id").toString();
        remember(commandId, fp, "COMPLETED", null);
        GenericData.Record info = new GenericData.Record(accountInfoSchema);
        info.put("external_number", oa.get("external_number").toString());
        info.put("owner_id", oa.get("owner_id").toString());
        info.put("currency", cur);
        info.put("kind", new GenericData.EnumSymbol(accountInfoSchema.getField("kind").schema(),
                oa.get("kind").toString()));
        event("ACCOUNT_OPENED", commandId, commandId, "OPEN_ACCOUNT", "COMPLETED", true, false, null,
                cmd.get("requested_by").toString(), null, null, cur, null, info, null, null);
    }

    private static String amountProblem(GenericRecord mv) {
        if (mv == null) {
            return "NOT_ALLOWED";
        }
        if (!CURRENCY.matcher(mv.get("currency").toString()).matches()) {
            return "UNKNOWN_CURRENCY";
        }
        long amount = (Long) mv.get("amount");
        if (amount <= 0) {
            return "NON_POSITIVE_AMOUNT";
        }
        return amount > MAX_AMOUNT ? "AMOUNT_TOO_LARGE" : null;
    }

    private String senderProblem(String currency) {
        if (account == null) {
            return "UNKNOWN_ACCOUNT";
        }
        if (account.status.equals("CLOSED")) {
            return "ACCOUNT_CLOSED";
        }
        if (account.status.equals("FROZEN")) {
            return "ACCOUNT_FROZEN";
        }
        return account.currency.equals(currency) ? null : "CURRENCY_MISMATCH";
    }

    private void deposit(GenericRecord cmd, String fp) {
        GenericRecord mv = (GenericRecord) cmd.get("movement");
        String reason = amountProblem(mv);
        if (reason == null) {
            reason = senderProblem(mv.get("currency").toString());
        }
        if (reason != null) {
            reject(cmd, reason, fp);
            return;
        }
        long amount = (Long) mv.get("amount");
        String cur = mv.get("currency").toString();
        String settlement = SETTLEMENT.computeIfAbsent(cur, c -> uuid5(NAMESPACE, "settlement:" + c));
        account.balance += amount;
        dirty = true;
        String commandId = cmd.get("command_id").toString();
        remember(commandId, fp, "COMPLETED", null);
        event("DEPOSITED", commandId, commandId, "DEPOSIT", "COMPLETED", true, false, null,
                cmd.get("requested_by").toString(), settlement, amount, cur,
                List.of(posting(settlement, "SETTLEMENT", -amount, cur), posting(key, account.kind, amount, cur)),
                null, null, metadata(mv));
    }

    private void transfer(GenericRecord cmd, String fp) {
        GenericRecord mv = (GenericRecord) cmd.get("movement");
        String reason = amountProblem(mv);
        String to = mv == null ? null : str(mv.get("counterparty_id"));
        if (reason == null) {
            if (to == null || to.isEmpty()) {
                reason = "UNKNOWN_ACCOUNT";
            } else if (to.equals(key)) {
                reason = "SAME_ACCOUNT";
            } else {
                reason = senderProblem(mv.get("currency").toString());
            }
        }
        // funds are checked on user accounts only (settlement accounts may go negative)
        if (reason == null && account.kind.equals("USER") && account.balance < (Long) mv.get("amount")) {
            reason = "INSUFFICIENT_FUNDS";
        }
        if (reason != null) {
            reject(cmd, reason, fp);
            return;
        }
        long amount = (Long) mv.get("amount");
        String cur = mv.get("currency").toString();
        String transit = TRANSIT.computeIfAbsent(cur, c -> uuid5(NAMESPACE, "transit:" + c));
        String commandId = cmd.get("command_id").toString();
        String by = cmd.get("requested_by").toString();
        account.balance -= amount;
        dirty = true;
        remember(commandId, fp, "PENDING", null);
        event("TRANSFER_DEBITED", commandId, commandId, "TRANSFER", "PENDING", false, false, null, by, to,
                amount, cur, List.of(posting(key, account.kind, -amount, cur), posting(transit, "TRANSIT", amount, cur)),
                null, null, metadata(mv));
        leg("CREDIT", to, commandId, commandId, amount, cur, by, null);
    }

    // ---------------------------------------------------------------------- legs

    private void applyLeg(GenericRecord leg) {
        String kind = leg.get("kind").toString();
        String pid = leg.get("payment_id").toString();
        if (kind.equals("CREDIT")) {
            // the payment record doubles as the credit's dedupe marker
            if (store.get(sk("p:" + pid)) == null) {
                credit(leg, pid);
            }
            return;
        }
        String legKey = sk("l:" + leg.get("leg_id"));
        if (store.get(legKey) != null) {
            return;
        }
        store.put(legKey, new byte[] {1});
        if (kind.equals("REFUND")) {
            refund(leg, pid);
        }
    }

    private void credit(GenericRecord leg, String pid) {
        long amount = (Long) leg.get("amount");
        String cur = leg.get("currency").toString();
        String sender = leg.get("counterparty_id").toString();
        String commandId = leg.get("command_id").toString();
        String by = leg.get("requested_by").toString();
        String refusal = null;
        if (account == null) {
            refusal = "RECEIVER_UNKNOWN";
        } else if (account.status.equals("FROZEN")) {
            refusal = "RECEIVER_FROZEN";
        } else if (account.status.equals("CLOSED")) {
            refusal = "RECEIVER_CLOSED";
        } else if (!account.currency.equals(cur)) {
            refusal = "RECEIVER_CURRENCY_MISMATCH";
        }
        if (refusal != null) {
            store.put(sk("p:" + pid), join("REFUSED", sender, Long.toString(amount), cur));
            leg("REFUND", sender, pid, commandId, amount, cur, by, refusal);
            return;
        }
        account.balance += amount;
        dirty = true;
        store.put(sk("p:" + pid), join("CREDITED", sender, Long.toString(amount), cur));
        String transit = TRANSIT.computeIfAbsent(cur, c -> uuid5(NAMESPACE, "transit:" + c));
        event("TRANSFER_COMPLETED", commandId, pid, "TRANSFER", "COMPLETED", true, false, null, by, sender,
                amount, cur, List.of(posting(transit, "TRANSIT", -amount, cur), posting(key, account.kind, amount, cur)),
                null, null, null);
    }

    private void refund(GenericRecord leg, String pid) {
        long amount = (Long) leg.get("amount");
        String cur = leg.get("currency").toString();
        String commandId = leg.get("command_id").toString();
        String reason = str(leg.get("reason"));
        account.balance += amount;
        dirty = true;
        byte[] seen = store.get(sk("c:" + commandId));
        if (seen != null) {
            String[] s = split(seen);
            remember(commandId, s[0], "FAILED", reason);
        }
        String transit = TRANSIT.computeIfAbsent(cur, c -> uuid5(NAMESPACE, "transit:" + c));
        event("TRANSFER_FAILED", commandId, pid, "TRANSFER", "FAILED", true, false, reason,
                leg.get("requested_by").toString(), leg.get("counterparty_id").toString(), amount, cur,
                List.of(posting(transit, "TRANSIT", -amount, cur), posting(key, account.kind, amount, cur)),
                null, null, null);
    }

    // ------------------------------------------------------------------ outputs

    private long nextSequence() {
        if (account != null) {
            account.seq += 1;
            dirty = true;
            return account.seq;
        }
        byte[] q = store.get(sk("q"));
        long seq = (q == null ? 0 : Long.parseLong(new String(q, StandardCharsets.UTF_8))) + 1;
        store.put(sk("q"), Long.toString(seq).getBytes(StandardCharsets.UTF_8));
        return seq;
    }

    private GenericRecord posting(String accountId, String kind, long amount, String currency) {
        GenericData.Record p = new GenericData.Record(postingSchema);
        p.put("account_id", accountId);
        p.put("account_kind", new GenericData.EnumSymbol(postingSchema.getField("account_kind").schema(), kind));
        p.put("amount", amount);
        p.put("currency", currency);
        return p;
    }

    private Schema eventField(String name) {
        Schema s = codec.event.getField(name).schema();
        return s.getType() == Schema.Type.UNION ? s.getTypes().get(1) : s;
    }

    private void event(String type, String commandId, String paymentId, String commandType, String status,
                       boolean terminal, boolean replay, String reason, String requestedBy, String counterparty,
                       Long amount, String currency, List<GenericRecord> postings, GenericRecord info,
                       String note, Map<?, ?> metadata) {
        long seq = nextSequence();
        GenericData.Record e = new GenericData.Record(codec.event);
        e.put("event_id", uuid5(NAMESPACE, commandId + "|" + type + "|" + key + "|" + seq));
        e.put("command_id", commandId);
        e.put("payment_id", paymentId);
        e.put("account_id", key);
        e.put("sequence", seq);
        e.put("type", new GenericData.EnumSymbol(eventField("type"), type));
        e.put("command_type", new GenericData.EnumSymbol(eventField("command_type"), commandType));
        e.put("status", new GenericData.EnumSymbol(eventField("status"), status));
        e.put("terminal", terminal);
        e.put("replay", replay);
        e.put("reason", reason == null ? null : new GenericData.EnumSymbol(eventField("reason"), reason));
        e.put("counterparty_id", counterparty);
        e.put("amount", amount);
        e.put("currency", currency);
        e.put("balance_after", account == null ? null : account.balance);
        e.put("postings", postings == null ? Collections.emptyList() : postings);
        e.put("account", info);
        e.put("requested_by", requestedBy);
        e.put("note", note);
        e.put("metadata", metadata == null ? Collections.emptyMap() : metadata);
        e.put("occurred_at", now);
        // Fields this peer does not compute (paystream's hash chain, its holds) keep
        // their schema defaults; a null in a field that is not nullable would not encode.
        for (Schema.Field f : codec.event.getFields()) {
            if (e.get(f.pos()) == null && f.hasDefaultValue()) {
                e.put(f.pos(), GenericData.get().getDefaultValue(f));
            }
        }
        ctx.forward(new Record<>(key, codec.encodeEvent(e), now), EVENTS_SINK);
    }

    private void leg(String kind, String target, String paymentId, String commandId, long amount, String currency,
                     String requestedBy, String reason) {
        GenericData.Record l = new GenericData.Record(codec.leg);
        l.put("leg_id", uuid5(NAMESPACE, "leg:" + paymentId + ":" + kind));
        l.put("kind", new GenericData.EnumSymbol(codec.leg.getField("kind").schema(), kind));
        l.put("command_id", commandId);
        l.put("payment_id", paymentId);
        l.put("account_id", target);
        l.put("counterparty_id", key);
        l.put("amount", amount);
        l.put("currency", currency);
        l.put("reason", reason);
        l.put("requested_by", requestedBy);
        l.put("issued_at", now);
        ctx.forward(new Record<>(target, codec.encodeLeg(l), now), LEGS_SINK);
    }

    // ------------------------------------------------------------------ helpers

    private static Map<?, ?> metadata(GenericRecord mv) {
        Object m = mv.get("metadata");
        return m instanceof Map<?, ?> map ? map : null;
    }

    private static String str(Object o) {
        return o == null ? null : o.toString();
    }

    /** What makes two commands with one id "the same" (domain.py's fingerprint). */
    static String fingerprint(GenericRecord cmd) {
        GenericRecord mv = (GenericRecord) cmd.get("movement");
        GenericRecord rv = (GenericRecord) cmd.get("reversal");
        GenericRecord oa = (GenericRecord) cmd.get("open_account");
        String parts = cmd.get("type") + "|" + cmd.get("account_id")
                + "|" + (mv == null ? null : mv.get("amount")) + "|" + (mv == null ? null : mv.get("currency"))
                + "|" + (mv == null ? null : mv.get("counterparty_id"))
                + "|" + (rv == null ? null : rv.get("payment_id"))
                + "|" + (oa == null ? null : oa.get("currency")) + "|" + (oa == null ? null : oa.get("kind"))
                + "|" + (oa == null ? null : oa.get("external_number"));
        long h = 0xcbf29ce484222325L;  // FNV-1a, 64 bit
        for (byte b : parts.getBytes(StandardCharsets.UTF_8)) {
            h ^= b & 0xff;
            h *= 0x100000001b3L;
        }
        return Long.toHexString(h);
    }

    static byte[] join(String... parts) {
        return String.join(String.valueOf(SEP), parts).getBytes(StandardCharsets.UTF_8);
    }

    static String[] split(byte[] value) {
        return new String(value, StandardCharsets.UTF_8).split(String.valueOf(SEP), -1);
    }

    /** RFC 4122 version-5 UUID as a canonical string (paystream.ids.uuid5). */
    static String uuid5(UUID namespace, String name) {
        MessageDigest sha1;
        try {
            sha1 = MessageDigest.getInstance("SHA-1");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        byte[] ns = new byte[16];
        long msb = namespace.getMostSignificantBits();
        long lsb = namespace.getLeastSignificantBits();
        for (int i = 0; i < 8; i++) {
            ns[i] = (byte) (msb >>> (56 - 8 * i));
            ns[8 + i] = (byte) (lsb >>> (56 - 8 * i));
        }
        sha1.update(ns);
        byte[] h = sha1.digest(name.getBytes(StandardCharsets.UTF_8));
        h[6] = (byte) ((h[6] & 0x0f) | 0x50);
        h[8] = (byte) ((h[8] & 0x3f) | 0x80);
        long hi = 0;
        long lo = 0;
        for (int i = 0; i < 8; i++) {
            hi = (hi << 8) | (h[i] & 0xff);
            lo = (lo << 8) | (h[8 + i] & 0xff);
        }
        return new UUID(hi, lo).toString();
    }

    /** The account record ("a"). */
    static final class Account {
        final String currency;
        final String kind;
        final String status;
        long balance;
        final String number;
        final String owner;
        long seq;

        Account(String currency, String kind, String status, long balance, String number, String owner, long seq) {
            this.currency = currency;
            this.kind = kind;
            this.status = status;
            this.balance = balance;
            this.number = number;
            this.owner = owner;
            this.seq = seq;
        }

        byte[] encode() {
            return join(currency, kind, status, Long.toString(balance), number, owner, Long.toString(seq));
        }

        static Account decode(byte[] v) {
            String[] s = split(v);
            return new Account(s[0], s[1], s[2], Long.parseLong(s[3]), s[4], s[5], Long.parseLong(s[6]));
        }
    }
}
