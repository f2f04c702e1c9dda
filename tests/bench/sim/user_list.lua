-- wrk script: user/list against orgsync-sim, cycling through the departments.
--   wrk -t1 -c64 -d10s -s user_list.lua http://127.0.0.1:PORT -- TOKEN NDEPTS
-- No response() hook on purpose: handing every ~11 KB body to Lua would make wrk,
-- not the simulator, the bottleneck. run.sh checks the answers in /sim/stats
-- (errcodes) instead.
local token, ndepts
local n = 0

function init(args)
    token = args[1]
    ndepts = tonumber(args[2] or "100")
    n = math.random(0, ndepts - 1)
end

function request()
    n = n + 1
    local dept = (n % ndepts) + 1
    return wrk.format("GET", "/cgi-bin/user/list?access_token=" .. token ..
                      "&department_id=" .. dept)
end
